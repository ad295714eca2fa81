"""Live playback, measured headless: `python benchmarks/playback.py [--load N] [--json]`.

Every case runs the real CLI in a child process under SDL's disk audio driver, which writes the
exact stream the mixer hands to the sound card. Times are read in stream frames (the disk
driver's clock is not the wall clock). Streamed playback is compared with an offline render of
the file the same command wrote: with the numpy synth the two are sample-identical unless the
stream stalled, so any difference is a glitch the listener would have heard.

Figures:
  latency        first sound after the audio stream started (for `play` the first note is due at 0)
  spacing error  largest deviation of heard onsets from the scheduled 300 ms grid
  load -> sound  model loaded to first generated note heard (the issue's 0.5 s goal)
  stall          time the live stream lost to underruns (its sounding span minus the offline one)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import wave

import numpy as np

SR = 44100

# Runs the CLI in the child, noting when the model finished loading and when audio opened.
TIMED_CLI = textwrap.dedent("""
    import json, sys, time
    from melodylstm import cli, playback
    marks = {}
    load, open_output = cli.load_generator, playback.PygameOutput.__init__
    def timed_load(*a):
        gen = load(*a); marks["loaded"] = time.monotonic(); return gen
    def timed_open(self):
        open_output(self); marks["opened"] = time.monotonic()
    cli.load_generator, playback.PygameOutput.__init__ = timed_load, timed_open
    try:
        cli.cli.main(sys.argv[2:], prog_name="melodylstm", standalone_mode=False)
    finally:
        json.dump(marks, open(sys.argv[1], "w"))
""")


def mono(capture_path) -> np.ndarray:
    data = np.fromfile(capture_path, dtype="<i2")
    return data[: len(data) // 2 * 2].reshape(-1, 2)[:, 0] / 32768.0


def read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0


def first_sound(signal, level=1e-4) -> int:
    return int(np.flatnonzero(np.abs(signal) > level)[0])


def onsets(signal, window=44, threshold=0.004) -> np.ndarray:
    """Seconds where short-time energy jumps (1 ms frames)."""
    frames = len(signal) // window
    energy = np.sqrt((signal[: frames * window].reshape(frames, window) ** 2).mean(axis=1))
    before = np.concatenate([[0.0], energy[:-1]])
    found = []
    for i in np.flatnonzero((energy > threshold) & (energy > 2.5 * before + 1e-4)):
        if not found or i * window / SR - found[-1] > 0.1:
            found.append(i * window / SR)
    return np.array(found)


def sounding_span(signal, level=1e-4) -> int:
    """Frames from the first to the last audible sample."""
    loud = np.flatnonzero(np.abs(signal) > level)
    return int(loud[-1] - loud[0])


def run(args, folder, name, timed=False):
    env = {**os.environ, "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": os.path.join(folder, name + ".raw"),
           "SDL_NO_SIGNAL_HANDLERS": "1", "PYGAME_HIDE_SUPPORT_PROMPT": "1"}
    marks = os.path.join(folder, name + ".json")
    command = [sys.executable, "-c", TIMED_CLI, marks, *args] if timed else [sys.executable, "-m", "melodylstm", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        raise SystemExit(f"melodylstm {' '.join(args)} failed: {result.stderr.strip()[-400:]}")
    synth = re.search(r"synth: (\w+)", result.stderr)
    return mono(env["SDL_DISKAUDIOFILE"]), (json.load(open(marks)) if timed else None), synth and synth.group(1)


def case_play(folder, synth) -> dict:
    """`melodylstm play`: five A4s scheduled 300 ms apart."""
    from melodylstm.midi import Song, write_midi

    midi = os.path.join(folder, "five.mid")
    write_midi(Song(np.array([[i * 12, 6, 69, 100, 0] for i in range(5)]), 12, [(0, 300000)], [(0, 4, 4)]), midi)
    audio, _, used = run(["play", midi, "--synth", synth], folder, "play-" + synth)
    heard = onsets(audio)
    return {"case": f"play, {used}", "latency_ms": first_sound(audio) / SR * 1000,
            "spacing_error_ms": float(np.abs(np.diff(heard) - 0.3).max() * 1000), "notes_heard": len(heard)}


def case_stream(folder, command, name) -> dict:
    """`generate/continue --play`: the live stream against an offline render of the written file."""
    out = os.path.join(folder, name + ".mid")
    live, marks, _ = run([*command, "-o", out, "--play", "--synth", "numpy", "--seed", "1"], folder, name, timed=True)
    wav = os.path.join(folder, name + ".wav")
    subprocess.run([sys.executable, "-m", "melodylstm", "render", out, "-o", wav, "--synth", "numpy",
                    "--peak", "off"], check=True, capture_output=True)  # the stream's level, to compare samples
    offline = read_wav(wav)
    a, b = first_sound(live), first_sound(offline)
    n = min(len(offline) - b, len(live) - a)
    return {"case": f"{command[0]} --play, numpy",
            "latency_ms": a / SR * 1000,
            "load_to_sound_ms": (marks["opened"] - marks["loaded"] + a / SR) * 1000,
            "stall_ms": (sounding_span(live) - sounding_span(offline)) / SR * 1000,  # silence the stream inserted
            "max_sample_difference": float(np.abs(live[a: a + n] - offline[b: b + n]).max())}


def worst(runs: list[dict]) -> dict:
    """The largest value of every figure over repeated runs (fewest notes heard)."""
    row = dict(runs[0])
    for key, value in row.items():
        if isinstance(value, (int, float)):
            row[key] = (min if key == "notes_heard" else max)(r[key] for r in runs)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="busy processes alongside (CPU load)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case; the worst figures are shown")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from melodylstm.midi import Song, write_midi

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        with tempfile.TemporaryDirectory() as folder:
            primer = os.path.join(folder, "primer.mid")  # one bar: an arpeggio over a held fifth
            notes = [[i * 6, 6, p, 90, 0] for i, p in enumerate([60, 64, 67, 72, 67, 64, 60, 55])]
            write_midi(Song(np.array(notes + [[0, 48, 48, 70, 0], [0, 48, 55, 70, 0]]), 12, [(0, 500000)]), primer)
            cases = [lambda: case_play(folder, "numpy"), lambda: case_play(folder, "auto"),
                     lambda: case_stream(folder, ["generate", "--bars", "4"], "generate"),
                     lambda: case_stream(folder, ["continue", primer, "--bars", "4"], "continue")]
            rows = [worst([case() for _ in range(args.repeat)]) for case in cases]
    finally:
        for proc in busy:
            proc.kill()
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "load": args.load, "rows": rows}, indent=2))
        return
    print(f"{os.cpu_count()} CPUs, {args.load} busy processes alongside, worst of {args.repeat} runs\n")
    print("| case | audio start -> first sound ms | onset spacing error ms | model loaded -> first note ms | "
          "stall ms | max sample difference to offline render |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [r.get(k) for k in ("latency_ms", "spacing_error_ms", "load_to_sound_ms", "stall_ms",
                                   "max_sample_difference")]
        print(f"| {r['case']} | " + " | ".join("-" if c is None else f"{c:.3g}" for c in cells) + " |")


if __name__ == "__main__":
    main()
