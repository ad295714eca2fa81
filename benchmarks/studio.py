"""`melodylstm studio`, measured headless: `python benchmarks/studio.py [--repeat N] [--json]`.

The real window runs in a child process under SDL's dummy video driver and disk audio driver
(which writes exactly the stream the mixer hands to the sound card), played by a script of
posted pygame events. This process watches the capture file grow: the disk driver writes one
mixer buffer (512 frames) at a time, so the moment each buffer is written is the moment it
would start to sound. An event's latency is then: the time its first sound was written, plus
its offset inside that buffer, minus the time the event was posted. No fitted clocks.

Figures:
  key -> sound        a key press to its onset in the stream, while the model samples a long
                      answer in its worker thread (keys at C8, answers kept below C5, found by
                      demodulating at C8's frequency), and with nothing else going on
  pause -> answer     the end of the pause (the first beat a bar after your last note) to the
                      answer's first sound; Enter -> answer: the same after Enter (no pause)
  stall               the live stream against an offline render of the file the window saved,
                      while it drew, sampled and saved: stream time lost to underruns
  idle CPU            the window open, nothing played, metronome on and off (% of one core)
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
import time
import wave

import numpy as np

SR = 44100
FRAME_BYTES = 4  # 16-bit stereo
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: the studio with a script thread that posts events and notes what it did when.
CHILD = textwrap.dedent("""
    import json, os, resource, sys, threading, time
    import pygame
    from melodylstm import studio
    from melodylstm.cli import cli

    out, scenario, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    acts, extra, holder = [], {}, {}

    def post(kind, key=None, **attrs):
        event = {"down": pygame.KEYDOWN, "up": pygame.KEYUP}.get(kind)
        if event is not None:
            pygame.event.post(pygame.event.Event(event, key=getattr(pygame, "K_" + key), mod=attrs.get("mod", 0)))
        elif kind == "drop":
            pygame.event.post(pygame.event.Event(pygame.DROPFILE, file=attrs["file"]))
        elif kind == "quit":
            pygame.event.post(pygame.event.Event(pygame.QUIT))
        app = holder["app"]
        acts.append([time.monotonic(), kind, key, app.job is not None and app.job.state == "sampling"])

    def tap(key, hold=0.15, after=0.1, **attrs):
        post("down", key, **attrs); time.sleep(hold); post("up", key, **attrs); time.sleep(after)

    def wait(condition, limit=30.0):
        end = time.monotonic() + limit
        while not condition() and time.monotonic() < end:
            time.sleep(0.01)

    def idle_answer(app):
        return app.job is None and app.audio.busy_until() < app.audio.now()

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def keys(app):  # key presses while the model samples a long answer, then with nothing going on
        app.answerer.gen_options["pitch_range"] = "C2-B4"
        app.answerer.pause = 1e9  # no answers but the ones asked for
        time.sleep(1.0)
        for key in "adgk":
            tap(key)
        for _ in range(3):
            post("down", "x"); post("up", "x")  # three octaves up: K is C8
            time.sleep(0.2)
        time.sleep(1.0)  # the new octave's notes are rendered ahead (the numpy synth takes ~0.5 s)
        for _ in range(4):
            tap("RETURN", hold=0.01, after=0.0)
            for _ in range(5):
                tap("k", hold=0.04, after=0.21)  # the last one has faded (150 ms) before the next
            wait(lambda: app.job is None)
            tap("ESCAPE", hold=0.01, after=0.5)  # stop the answer: the next keys sound alone
        for _ in range(8):
            tap("k", hold=0.05, after=0.25)

    def pause(app):  # phrases answered after the pause, then answers asked for with Enter
        time.sleep(1.0)
        for round in range(4):
            for key in ["adgh", "hgfd", "sfhk", "kjhg"][round]:
                tap(key, hold=0.2, after=0.05)
            if round == 3:  # the phrase has faded (150 ms) before Enter: the answer is heard alone
                time.sleep(0.3)
                tap("RETURN", hold=0.01, after=0.0)
            if round == 0:  # the picture: phrase and answer on screen, the answer playing
                wait(lambda: app.answers > 0 and app.job is None)
                time.sleep(1.5)
                extra["screenshot"] = os.path.join(out, "studio.png")
            wait(lambda: app.answers > round and idle_answer(app))
            time.sleep(0.6)
        tap("RETURN", hold=0.01)
        wait(lambda: app.answers > 4 and idle_answer(app))
        time.sleep(0.5)

    def stall(app):  # a file plays and is continued while the window draws, samples and saves
        time.sleep(0.5)
        post("drop", file=os.path.join(out, "primer.mid"))
        time.sleep(3.0)
        post("down", "s", mod=pygame.KMOD_CTRL); post("up", "s", mod=pygame.KMOD_CTRL)
        wait(lambda: any(m.startswith("saved") for m in app.messages))
        wait(lambda: idle_answer(app))
        time.sleep(1.0)

    def idle(app):
        time.sleep(1.5)
        for name in ("metronome on", "metronome off"):
            start, frames = cpu(), app.frames
            time.sleep(5.0)
            extra[name] = {"cpu": (cpu() - start) / 5.0, "fps": (app.frames - frames) / 5.0}
            post("down", "m"); post("up", "m")
            time.sleep(0.3)

    def script():
        try:
            globals()[scenario](holder["app"])
        finally:
            post("quit")

    def on_frame(app):
        app.frames = getattr(app, "frames", 0) + 1
        if "app" not in holder:
            holder["app"] = app
            threading.Thread(target=script, daemon=True).start()
        if extra.get("screenshot"):
            pygame.image.save(app.screen, extra.pop("screenshot"))

    studio.Studio.on_frame = on_frame
    try:
        cli.main(args, prog_name="melodylstm", standalone_mode=False)
    finally:
        app = holder.get("app")
        with open(os.path.join(out, scenario + ".json"), "w") as f:
            json.dump({"acts": acts, "extra": extra, "events": app.events if app else [],
                       "parts": [{"kind": p.kind, "notes": p.notes} for p in app.session.parts] if app else [],
                       "messages": app.messages if app else [], "restarts": app.audio.output.restarts if app else 0}, f)
""")


def run_child(folder, scenario, args, load=0):
    """Run one scenario; returns its log and the capture's write log [(monotonic, frames)]."""
    capture = os.path.join(folder, f"{scenario}-{len(os.listdir(folder))}.raw")  # a new file: no stale sizes
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": capture,
           "SDL_NO_SIGNAL_HANDLERS": "1", "PYGAME_HIDE_SUPPORT_PROMPT": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    child = subprocess.Popen([sys.executable, "-c", CHILD, folder, scenario, "studio", "--out", folder, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    writes, last = [], -1
    try:
        while child.poll() is None:  # watch the stream being written, buffer by buffer
            try:
                size = os.stat(capture).st_size
            except OSError:
                size = -1
            if size != last:
                writes.append((time.monotonic(), size // FRAME_BYTES))
                last = size
            time.sleep(0.0005)
    finally:
        for proc in busy:
            proc.kill()
    err = child.stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"studio {scenario} failed: {err.strip()[-600:]}")
    with open(os.path.join(folder, scenario + ".json")) as f:
        log = json.load(f)
    data = np.fromfile(capture, dtype="<i2")
    audio = data[: len(data) // 2 * 2].reshape(-1, 2)[:, 0] / 32768.0
    return log, buffer_times(np.array(writes)), audio, err


MIXER_BUFFER = 512  # frames the mixer hands over at a time (studio.KEY_BUFFER)


def buffer_times(writes):
    """(first frame, write time) of every mixer buffer. The disk driver writes through stdio,
    whose 4096-byte buffer holds two of ours: the file grows by both when the *next* one is
    written, so a buffer reached the file one or two buffer periods before the growth was seen."""
    writes = writes[writes[:, 1] > 0]
    seen, ends = writes[:, 0], writes[:, 1].astype(np.int64)
    flushed = np.diff(np.concatenate([[0], ends]))
    count = np.maximum(1, flushed // MIXER_BUFFER)
    period = float(np.median(np.diff(seen) / count[1:]))  # the driver's own pace
    starts, times = [], []
    for seen, end, n, size in zip(seen.tolist(), ends.tolist(), count.tolist(), flushed.tolist()):
        for j in range(n):
            starts.append(end - size + j * MIXER_BUFFER)
            times.append(seen - (n - j) * period)
    return np.array(starts), np.array(times)


def written_at(buffers, frame) -> float:
    """Monotonic time at which `frame` was written: its buffer's write time plus its offset in it."""
    starts, times = buffers
    i = max(0, int(np.searchsorted(starts, frame, side="right")) - 1)
    return times[i] + (frame - starts[i]) / SR


def frame_at(buffers, when) -> int:
    """The frame being written (starting to sound) at monotonic time `when`."""
    starts, times = buffers
    i = max(0, int(np.searchsorted(times, when, side="right")) - 1)
    return int(starts[i] + min(MIXER_BUFFER, max(0.0, when - times[i]) * SR))


def envelope(signal, hz=None, ms=1.0):
    """1 ms energy frames; with `hz`, only what is near that frequency (complex demodulation and a
    causal triangular low-pass: no energy leaks backwards in time)."""
    n = int(SR * ms / 1000)
    if hz is not None:
        t = np.arange(len(signal)) / SR
        base = signal * np.exp(-2j * np.pi * hz * t)
        for _ in range(2):
            c = np.cumsum(np.concatenate([np.zeros(2 * n), base]))
            base = (c[2 * n:] - c[:-2 * n]) / (2 * n)
        signal = np.abs(base) * 2
    frames = len(signal) // n
    return np.sqrt((np.abs(signal[: frames * n].reshape(frames, n)) ** 2).mean(axis=1)), n


def first_rise(env, n, after_frame, level, limit_s=0.5) -> int | None:
    start = max(0, after_frame // n)
    stop = min(len(env), start + int(limit_s * SR / n))
    hits = np.flatnonzero(env[start:stop] > level)
    return None if not len(hits) else (start + hits[0]) * n


def case_keys(folder, synth, load):
    log, writes, audio, err = run_child(folder, "keys", ["--synth", synth, "--no-metronome", "--bars", "48"], load)
    used = re.search(r"synth: (\w+)", err)
    synth = used.group(1) if used else synth
    c8 = 440 * 2 ** ((108 - 69) / 12)
    env, n = envelope(audio, hz=c8)
    busy, idle, detail = [], [], []
    handled = [e[0] for e in log["events"] if e[2] == "key" and e[3] == 108]
    for when, kind, key, sampling in log["acts"]:
        if kind != "down" or key != "k":
            continue
        frame = frame_at(writes, when)
        if frame == 0:
            continue
        peak = env[frame // n: frame // n + 100].max()
        before = env[max(0, frame // n - 5): frame // n + 1].max()  # what still sounds from the last one
        onset = first_rise(env, n, frame - int(0.005 * SR), max(0.3 * peak, 3 * before, 1e-3))
        if onset is None:
            continue
        latency = (written_at(writes, onset) - when) * 1000
        (busy if sampling else idle).append(round(latency, 1))
        loop = min((h for h in handled if h >= when - 0.001), default=when) - when  # the window saw it
        detail.append([round(when - writes[1][0], 2), sampling, round(loop * 1000, 1), round(latency, 1)])
    return {"case": f"key -> sound, {synth}", "while sampling": busy, "idle": idle,
            "restarts": log["restarts"], "detail": detail}


def case_pause(folder, load):
    log, writes, audio, _ = run_child(folder, "pause", ["--no-metronome", "--bars", "2", "--seed", "1"], load)
    env, n = envelope(audio)
    ups = [a for a in log["acts"] if a[1] == "up" and a[2] != "RETURN"]
    enters = [a for a in log["acts"] if a[1] == "down" and a[2] == "RETURN"]
    played = [note for p in log["parts"] if p["kind"] == "phrase" for note in p["notes"]]
    pause, enter = [], []
    for wall, origin, what, target in log["events"]:
        if what != "answer placed":
            continue
        if target is not None:  # ended by a pause, which ends at `target` on the window's clock
            release_stream = max(note[1] for note in played if note[1] < target)
            release_wall = max(a[0] for a in ups if a[0] < wall)  # the same release, as posted
            end_frame = frame_at(writes, release_wall) + int((target - release_stream) * SR)
            onset = first_rise(env, n, end_frame - int(0.1 * SR), 0.003, limit_s=2.0)
            pause.append((written_at(writes, onset) - written_at(writes, end_frame)) * 1000)
        else:  # Enter
            when = max(a[0] for a in enters if a[0] <= wall)
            frame = frame_at(writes, when)
            before = env[max(0, frame // n - 5): frame // n + 1].max()
            onset = first_rise(env, n, frame, max(0.003, 3 * before), limit_s=2.0)
            enter.append((written_at(writes, onset) - when) * 1000)
    return {"case": "pause -> answer, default model", "pause": pause, "enter": enter, "restarts": log["restarts"]}


def case_stall(folder, load):
    from melodylstm.midi import Song, write_midi

    # two bars at 200 bpm, answered by six more: 10 s of music
    notes = [[i * 6, 6, p, 90, 0] for i, p in enumerate([60, 64, 67, 72, 67, 64, 60, 55] * 2)]
    write_midi(Song(np.array(notes + [[0, 48, 48, 70, 0], [48, 48, 43, 70, 0]]), 12, [(0, 300000)]),
               os.path.join(folder, "primer.mid"))
    log, writes, live, _ = run_child(folder, "stall", ["--synth", "numpy", "--no-metronome", "--bars", "6",
                                                       "--seed", "2"], load)
    wav = os.path.join(folder, "offline.wav")
    subprocess.run([sys.executable, "-m", "melodylstm", "render", os.path.join(folder, "session.mid"), "-o", wav,
                    "--synth", "numpy", "--peak", "off"], check=True, capture_output=True, cwd=ROOT)  # stream level
    with wave.open(wav) as w:
        offline = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0

    def span(signal):
        loud = np.flatnonzero(np.abs(signal) > 1e-4)
        return loud[0], loud[-1]

    (a, a_end), (b, b_end) = span(live), span(offline)
    m = min(len(live) - a, len(offline) - b)
    return {"case": "stream vs offline render (drawing, sampling, saving), numpy",
            "stall_ms": ((a_end - a) - (b_end - b)) / SR * 1000,
            "max_sample_difference": float(np.abs(live[a: a + m] - offline[b: b + m]).max()),
            "seconds": (b_end - b) / SR, "restarts": log["restarts"]}


def case_idle(folder):
    log, _, _, _ = run_child(folder, "idle", [])
    return {"case": "idle window", **log["extra"]}


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"median {np.median(values):.0f}, max {np.max(values):.0f} (n={len(values)})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, default=0, help="busy processes alongside (CPU load)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--screenshot", help="copy the window's picture here (e.g. benchmarks/studio.png)")
    parser.add_argument("--cases", default="keys,pause,stall,idle", help="which cases to run")
    args = parser.parse_args(argv)
    cases = {"keys": lambda f: [case_keys(f, "numpy", args.load), case_keys(f, "auto", args.load)],
             "keys-numpy": lambda f: [case_keys(f, "numpy", args.load)],
             "pause": lambda f: [case_pause(f, args.load)], "stall": lambda f: [case_stall(f, args.load)],
             "idle": lambda f: [case_idle(f)]}
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for name in args.cases.split(",") for row in cases[name](folder)]
        if args.screenshot:
            import shutil

            shutil.copy(os.path.join(folder, "studio.png"), args.screenshot)
    if args.json or args.cases != parser.get_default("cases"):
        print(json.dumps({"cpus": os.cpu_count(), "load": args.load, "rows": rows}, indent=2))
        return
    print(f"{os.cpu_count()} CPUs, {args.load} busy processes alongside\n")
    table(rows)


def table(rows) -> None:
    keys_numpy, keys_auto, pause, stall, idle = rows
    print("| figure | ms |")
    print("|---|---|")
    for row in (keys_numpy, keys_auto):
        print(f"| {row['case']}, while the model samples an answer | {summary(row['while sampling'])} |")
        print(f"| {row['case']}, nothing else going on | {summary(row['idle'])} |")
    print(f"| pause end -> first answered note (default model) | {summary(pause['pause'])} |")
    print(f"| Enter -> first answered note (default model) | {summary(pause['enter'])} |")
    print(f"| stall: live stream vs offline render of the saved file ({stall['seconds']:.1f} s) | "
          f"{stall['stall_ms']:.1f} (max sample difference {stall['max_sample_difference']:.4f}) |")
    for name in ("metronome on", "metronome off"):
        print(f"| idle CPU, {name} | {idle[name]['cpu'] * 100:.1f}% of one core ({idle[name]['fps']:.0f} frames/s) |")
    restarts = sum(r.get("restarts", 0) for r in rows)
    print(f"\nstuck mixer channels recovered: {restarts}")


if __name__ == "__main__":
    main()
