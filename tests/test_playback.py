"""Playback, headless: SDL's disk audio driver writes exactly what would reach the speakers.
Every test that starts SDL runs in a child process (SDL state never leaks between tests)."""
import os
import subprocess
import sys
import textwrap
import wave

import numpy as np
import pytest

from melodylstm.midi import DRUMS, Song, write_midi
from melodylstm.playback import Timeline, play_to_port
from melodylstm.synth import make_synth

from helpers import SR, onsets, read_wav
from helpers import cli as run_cli

ENV = {**os.environ, "SDL_NO_SIGNAL_HANDLERS": "1", "PYGAME_HIDE_SUPPORT_PROMPT": "1", "SDL_VIDEODRIVER": "dummy"}


def five_notes(path, pitch=69, spacing_steps=12, tempo_us=300000):
    """5 notes 300 ms apart (a quarter at 200 bpm), each 150 ms long."""
    notes = [[i * spacing_steps, spacing_steps // 2, pitch, 100, 0] for i in range(5)]
    write_midi(Song(np.array(notes), 12, [(0, tempo_us)], [(0, 4, 4)]), path)


def dominant_frequency(signal):
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return np.fft.rfftfreq(len(signal), 1 / SR)[spectrum.argmax()]


def cli(*args, env=ENV, timeout=60):
    return run_cli(*args, env=env, timeout=timeout)


@pytest.mark.parametrize("synth", ["numpy", "tinysoundfont"])
def test_render_is_audible_in_time_and_in_tune(tmp_path, synth):
    if synth == "tinysoundfont":
        pytest.importorskip("tinysoundfont")
    midi, wav = tmp_path / "five.mid", tmp_path / "five.wav"
    five_notes(midi)
    result = cli("render", str(midi), "-o", str(wav), "--synth", synth)
    assert result.returncode == 0, result.stderr
    audio = read_wav(wav)
    assert np.sqrt((audio ** 2).mean()) > 0.002
    found = onsets(audio)
    assert len(found) == 5 and np.allclose(np.diff(found), 0.3, atol=0.012), found
    assert found[0] < 0.012
    assert dominant_frequency(audio[int(0.02 * SR): int(0.14 * SR)]) == pytest.approx(440, abs=8)
    with wave.open(str(wav)) as w:  # both channels: the peak may be on either side
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2") / 32768.0
    assert 20 * np.log10(np.abs(stereo).max()) == pytest.approx(-1.0, abs=0.05)  # normalised, whatever the synth


def test_render_peak_is_minus_one_dbfs_for_quiet_and_loud_music_and_off_keeps_the_synth_level(tmp_path):
    from melodylstm.playback import render_wav
    from melodylstm.synth import NumpySynth

    def render(velocity, chord, peak):
        timeline = Timeline()
        for i in range(4):
            for p in chord:
                timeline.add_note(i * 0.3, i * 0.3 + 0.2, p, velocity, 0)
        path = tmp_path / f"{velocity}-{len(chord)}-{peak}.wav"
        render_wav(timeline, NumpySynth(), path, peak_dbfs=peak)
        return 20 * np.log10(np.abs(read_wav(path)).max())

    for velocity, chord in ((20, [69]), (127, [48, 52, 55, 60, 64, 67])):
        assert render(velocity, chord, -1.0) == pytest.approx(-1.0, abs=0.05)
        assert render(velocity, chord, -6.0) == pytest.approx(-6.0, abs=0.05)
    assert render(20, [69], None) < -30  # the synth's own level: quiet
    assert list(tmp_path.glob("*.tmp")) == [] and sorted(p.suffix for p in tmp_path.iterdir()) == [".wav"] * 5


def test_render_peak_option_is_checked(tmp_path):
    midi = tmp_path / "five.mid"
    five_notes(midi)
    result = cli("render", str(midi), "-o", str(tmp_path / "a.wav"), "--peak", "3")
    assert result.returncode == 1 and "--peak must be" in result.stderr and not (tmp_path / "a.wav").exists()


def test_render_refuses_to_overwrite_its_input(tmp_path):
    midi = tmp_path / "a.mid"
    five_notes(midi)
    result = cli("render", str(midi), "-o", str(midi))
    assert result.returncode == 1 and "input file" in result.stderr


def test_an_output_named_for_another_format_is_refused(tmp_path):
    """render writes WAV and show PNG whatever the name: x.mp3 held a WAV, x.jpg a PNG."""
    midi = tmp_path / "a.mid"
    five_notes(midi)
    for command, name, kind in (("render", "x.mp3", "WAV"), ("show", "x.jpg", "PNG")):
        result = cli(command, str(midi), "-o", str(tmp_path / name))
        assert result.returncode == 1 and f"writes a {kind} file" in result.stderr, result.stderr
        assert not (tmp_path / name).exists()


def test_play_through_the_disk_driver(tmp_path):
    midi, capture = tmp_path / "five.mid", tmp_path / "capture.raw"
    five_notes(midi)
    env = {**ENV, "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": str(capture)}
    result = cli("play", str(midi), "--synth", "numpy", env=env)
    assert result.returncode == 0, result.stderr
    audio = np.fromfile(capture, dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0
    assert np.sqrt((audio ** 2).mean()) > 0.002
    found = onsets(audio)
    # times in stream frames: the disk driver's clock is not the wall clock
    assert found[0] < 0.1, found  # the first note sounds at once
    assert len(found) == 5 and np.allclose(np.diff(found), 0.3, atol=0.03), found


def test_no_audio_device_is_a_one_line_error(tmp_path):
    midi = tmp_path / "five.mid"
    five_notes(midi)
    result = cli("play", str(midi), env={**ENV, "SDL_AUDIODRIVER": "no_such_driver"})
    assert result.returncode == 1 and "no audio device" in result.stderr and "--wav" in result.stderr
    assert f"melodylstm render {midi} -o {tmp_path / 'five.wav'}" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["generate", "continue"])
def test_play_without_audio_device_still_writes_the_file_and_names_it(tmp_path, untrained_checkpoint, command):
    """No sound card: the music is generated and written all the same, then one error line says
    so and how to render the file that now exists."""
    primer, out = tmp_path / "five.mid", tmp_path / "out.mid"
    five_notes(primer)
    args = [command, *([str(primer)] if command == "continue" else []), "-o", str(out), "--play",
            "-c", str(untrained_checkpoint), "--bars", "1", "--seed", "1"]
    result = cli(*args, env={**ENV, "SDL_AUDIODRIVER": "no_such_driver"})
    assert result.returncode == 1, result.stderr
    from melodylstm.midi import read_midi

    assert len(read_midi(out, 12).notes) > 0  # a real MIDI file, with the music
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"wrote {out}")  # written first, then the error
    assert lines[1].startswith("Error: no audio device") and len(lines) == 2, lines
    assert f"melodylstm render {out} -o {tmp_path / 'out.wav'}" in lines[1]


def test_no_alsa_noise_without_a_sound_card(tmp_path):
    """libasound prints `ALSA lib ...` lines when it finds no card: none reach stderr, -v shows them.
    Skipped where ALSA finds a device (then there is nothing to hide)."""
    midi = tmp_path / "five.mid"
    five_notes(midi)
    env = {**ENV, "SDL_AUDIODRIVER": "alsa", "AUDIODEV": "no_such_card_melodylstm"}
    result = cli("play", str(midi), "--synth", "numpy", env=env)
    if result.returncode == 0 or "no audio device" not in result.stderr:
        pytest.skip("ALSA opened a device here")
    assert "ALSA lib" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    verbose = cli("-v", "play", str(midi), "--synth", "numpy", env=env)
    assert "no audio device" in verbose.stderr


QUIET_SCRIPT = textwrap.dedent("""
    import os, sys
    from melodylstm import playback
    playback.SHOW_BACKEND_NOISE = sys.argv[1] == "show"
    with playback.quiet_stderr():
        os.write(2, b"ALSA lib noise from C\\n")
    os.write(2, b"after\\n")
""")


@pytest.mark.parametrize("show", [False, True])
def test_quiet_stderr_captures_the_file_descriptor(show):
    result = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, "show" if show else "hide"], capture_output=True,
                            text=True, env=ENV, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("ALSA lib noise from C" in result.stderr) == show and result.stderr.endswith("after\n")


def test_ports_says_in_one_line_when_the_midi_system_fails(monkeypatch):
    """rtmidi raises its own error (not an OSError) when e.g. the ALSA sequencer is missing."""
    import mido
    from click.testing import CliRunner

    from melodylstm.cli import cli as melodylstm

    class SystemError_(Exception):  # what rtmidi raises: a plain Exception subclass
        pass

    def fail():
        raise SystemError_("MidiInAlsa::initialize: error creating ALSA sequencer client object.")

    monkeypatch.setattr(mido, "get_output_names", fail)
    result = CliRunner().invoke(melodylstm, ["ports"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no MIDI system available here"), lines


STREAM_SCRIPT = textwrap.dedent("""
    import sys, threading, time, json
    from melodylstm.midi import Song
    from melodylstm.playback import LivePlayer, play_to_device
    from melodylstm.synth import NumpySynth
    like = Song([], 12, [(0, 500000)], [(0, 4, 4)])
    player = LivePlayer(like)
    done = {}
    def slow_sampler():  # emulates a sampler that needs 1.5 s for its notes
        start = time.perf_counter()
        for i in range(8):
            player.add_note((i * 6, 6, 60 + i, 100, 0))
            time.sleep(0.2)
        done["seconds"] = time.perf_counter() - start
        player.close()
    t0 = time.perf_counter()
    threading.Thread(target=slow_sampler, daemon=True).start()
    play_to_device(player.timeline, NumpySynth())
    print(json.dumps(done))
""")


def test_streamed_notes_sound_before_generation_finishes(tmp_path):
    import json

    capture = tmp_path / "capture.raw"
    env = {**ENV, "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": str(capture)}
    result = subprocess.run([sys.executable, "-c", STREAM_SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    generation_seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    audio = np.fromfile(capture, dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0
    first_sound = np.flatnonzero(np.abs(audio) > 0.01)[0] / SR
    assert first_sound < 0.15 < generation_seconds  # heard long before the sampler was done
    for i in range(8):  # every note arrived in time to be heard at its place (0.25 s apart)
        window = audio[int((first_sound + i * 0.25 + 0.02) * SR): int((first_sound + i * 0.25 + 0.1) * SR)]
        assert np.sqrt((window ** 2).mean()) > 0.005, i


def test_generate_play_streams_without_gaps(tmp_path):
    """The real sampler in a worker thread, playback in the main thread: the captured audio has no
    silence that an offline render of the same notes does not have."""
    from melodylstm.checkpoint import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("no default model")
    capture, out = tmp_path / "capture.raw", tmp_path / "g.mid"
    env = {**ENV, "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": str(capture)}
    result = cli("generate", "--play", "--synth", "numpy", "--bars", "2", "--seed", "3", "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    live = np.fromfile(capture, dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0
    assert cli("render", str(out), "-o", str(tmp_path / "ref.wav"), "--synth", "numpy").returncode == 0
    offline = read_wav(tmp_path / "ref.wav")

    def longest_silence(signal):
        quiet = np.abs(signal[: int(3.9 * SR)]) < 1e-4
        best = run = 0
        for q in quiet[::44]:  # 1 ms resolution
            run = run + 1 if q else 0
            best = max(best, run)
        return best / 1000

    start = np.flatnonzero(np.abs(live) > 1e-4)[0]
    # the audio stream starts before the model loads, so this bounds "model loaded -> first note"
    # (after the rest a piece may open with: a tune can start on its last beat)
    opening_rest = np.flatnonzero(np.abs(offline) > 1e-4)[0] / SR
    assert start / SR - opening_rest < 0.5
    assert longest_silence(live[start:]) <= longest_silence(offline) + 0.03


def test_port_scheduler_keeps_time_and_ends_with_all_notes_off():
    sent = []
    clock = {"t": 0.0}

    class FakePort:
        def send(self, msg):
            sent.append((round(clock["t"], 3), msg))

        def close(self):
            sent.append((round(clock["t"], 3), "closed"))

    def sleep(seconds):
        clock["t"] += max(seconds, 0.001)

    timeline = Timeline()
    for i in range(4):
        timeline.add_note(i * 0.25, i * 0.25 + 0.2, 60 + i, 90, 0)
    timeline.add_note(0.1, 0.2, 36, 100, DRUMS)
    timeline.close()
    play_to_port(timeline, FakePort(), clock=lambda: clock["t"], sleep=sleep)
    ons = [(t, m.note) for t, m in sent if getattr(m, "type", "") == "note_on"]
    assert [n for _, n in ons] == [60, 36, 61, 62, 63]
    assert all(abs(t - want) <= 0.011 for (t, _), want in zip(ons, [0, 0.1, 0.25, 0.5, 0.75]))
    drum = [m for _, m in sent if getattr(m, "type", "") == "note_on" and m.note == 36][0]
    assert drum.channel == 9
    resets = [m for _, m in sent if getattr(m, "type", "") == "control_change" and m.control == 123]
    assert len(resets) == 16 and sent[-1][1] == "closed"


def test_synths_make_sound_and_stop():
    synth = make_synth("numpy")
    synth.note_on(0, 69, 100)
    assert np.abs(synth.render(4410)).max() > 0.01
    synth.note_off(0, 69)
    synth.render(SR)  # the release ends
    assert synth.silent() and np.abs(synth.render(1000)).max() == 0
    assert make_synth("auto").name in ("fluidsynth", "tinysoundfont", "numpy")


def test_show_draws_primer_and_generated_notes(tmp_path):
    import pygame

    from melodylstm.generate import CONTINUATION_NAME
    from melodylstm.midi import append_tracks, midifile_bytes, song_to_midifile
    from melodylstm.pianoroll import GENERATED, PRIMER

    primer = Song(np.array([[0, 48, 60, 127, 0]]), 12, [(0, 500000)])
    new = Song(np.array([[48, 48, 72, 127, 0]]), 12, [(0, 500000)])
    path, png = tmp_path / "c.mid", tmp_path / "roll.png"
    path.write_bytes(append_tracks(midifile_bytes(song_to_midifile(primer)), new, CONTINUATION_NAME))
    result = cli("show", str(path), "-o", str(png), "--width", "400", "--height", "200")
    assert result.returncode == 0, result.stderr
    image = pygame.image.load(str(png))
    width, height = image.get_size()
    # pitch 60 sits lower than pitch 72; the first note fills the first half, the second the second
    colours = {}
    for x in range(45, width, 4):
        for y in range(0, height, 2):
            c = tuple(image.get_at((x, y)))[:3]
            if c in (PRIMER, GENERATED):
                colours.setdefault(c, []).append((x, y))
    assert PRIMER in colours and GENERATED in colours
    primer_xy, new_xy = np.array(colours[PRIMER]), np.array(colours[GENERATED])
    assert primer_xy[:, 0].max() < new_xy[:, 0].min()  # generated notes come after the primer
    assert primer_xy[:, 1].mean() > new_xy[:, 1].mean()  # and higher (pitch 72 above 60)


def test_jam_answers_a_phrase_after_a_pause(tmp_path):
    """A scripted keyboard: four notes, then silence; the model answers once, after the pause."""
    import mido
    import torch

    from melodylstm.checkpoint import save_checkpoint
    from melodylstm.config import ModelConfig
    from melodylstm.generate import Generator
    from melodylstm.jam import Jam
    from melodylstm.model import MelodyLSTM
    from melodylstm.tokenizer import Tokenizer

    tok = Tokenizer()
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.safetensors", MelodyLSTM(ModelConfig(len(tok), 8, 32, 1, 0.0)), tok)
    gen = Generator.load(tmp_path / "m.safetensors")
    clock = {"t": 0.0}
    script = []
    for i, pitch in enumerate([60, 62, 64, 65]):
        script += [(i * 0.5, mido.Message("note_on", note=pitch, velocity=90)),
                   (i * 0.5 + 0.4, mido.Message("note_off", note=pitch))]

    class ScriptedPort:
        def iter_pending(self):
            clock["t"] += 0.05
            while script and script[0][0] <= clock["t"]:
                yield script.pop(0)[1]

    answers = []
    jam = Jam(gen, lambda timeline: answers.append((clock["t"], timeline)), bars=1, tempo=120, seed=1,
              clock=lambda: clock["t"])
    jam.run(ScriptedPort(), max_answers=1, idle_sleep=0)
    when, timeline = answers[0]
    assert 1.9 + 2.0 <= when <= 1.9 + 2.0 + 0.11  # last note-off at 1.9 s, then one bar (2 s) of silence
    assert timeline.notes and all(0 <= n[0] < 2.5 for n in timeline.notes)  # about one bar, starting now


WINDOW_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import pygame
    from melodylstm import pianoroll
    from melodylstm.cli import cli

    folder, args = sys.argv[1], sys.argv[2:]
    SHOTS, PAUSE_AT, PAUSE_FOR, ESC_AT = (0.5, 2.6), 0.9, 0.6, 3.0
    log, frames, state = [], {}, {"paused_at": None, "resumed": False}
    original = pianoroll.Window.draw

    def key(k):
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k))

    def draw(self, timeline, now):  # the real draw, then a look at what is on screen
        original(self, timeline, now)
        wall = time.monotonic()
        log.append((wall, now))
        for shot in SHOTS:
            if now >= shot and str(shot) not in frames:
                pygame.image.save(self.screen, f"{folder}/frame-{shot}.png")
                frames[str(shot)] = {"now": now, "span": self.span, "notes": [list(n) for n in timeline.notes]}
        if state["paused_at"] is None and now >= PAUSE_AT:
            key(pygame.K_SPACE)
            state["paused_at"] = wall
        elif state["paused_at"] and not state["resumed"] and wall - state["paused_at"] >= PAUSE_FOR:
            key(pygame.K_SPACE)
            state["resumed"] = True
        if now >= ESC_AT:
            key(pygame.K_ESCAPE)

    pianoroll.Window.draw = draw
    try:
        cli.main(args, prog_name="melodylstm", standalone_mode=False)
    finally:
        with open(f"{folder}/log.json", "w") as f:
            json.dump({"log": log, "frames": frames}, f)
""")


def test_live_window_scrolls_pauses_and_quits(tmp_path):
    """`continue --play --window` under SDL's dummy video driver: frames show the primer in blue and
    the continuation in orange where the notes are, a playhead at the playing time, the view scrolls;
    space pauses the clock and Esc ends playback early, and the file is still written."""
    import json

    import pygame

    from melodylstm.checkpoint import DEFAULT_CHECKPOINT
    from melodylstm.midi import read_midi_tracks
    from melodylstm.pianoroll import GENERATED, PLAYHEAD, PRIMER, geometry, pitch_bounds

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("no default model")
    primer, out = tmp_path / "primer.mid", tmp_path / "out.mid"
    # two bars of quarters at 240 bpm (one bar = 1 s); two generated bars make a 4 s piece
    notes = [[i * 12, 12, 60 + [0, 2, 4, 5, 7, 5, 4, 2][i], 100, 0] for i in range(8)]
    write_midi(Song(np.array(notes), 12, [(0, 250000)], [(0, 4, 4)]), primer)
    env = {**ENV, "SDL_AUDIODRIVER": "disk", "SDL_DISKAUDIOFILE": str(tmp_path / "capture.raw")}
    args = ["continue", str(primer), "-o", str(out), "--bars", "2", "--seed", "5", "--play", "--window",
            "--synth", "numpy"]
    result = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT, str(tmp_path), *args], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "log.json").read_text())
    assert out.exists()  # quitting the window early still writes the continuation

    # the window shows exactly the notes of the written file, primer and continuation told apart
    written = []
    for name, part in read_midi_tracks(out, 96):
        t = Timeline()
        t.add_song(part)
        written += [(round(s, 3), p, name.startswith("melodylstm")) for s, e, p, v, prog, new in t.notes]
    last = record["frames"]["2.6"]
    shown = [(round(n[0], 3), n[2], n[5]) for n in last["notes"]]
    assert sorted(shown) == sorted(written) and any(n[2] for n in written)

    def look(shot):
        frame = record["frames"][str(shot)]
        image = pygame.image.load(str(tmp_path / f"frame-{shot}.png"))
        t0 = max(0.0, frame["now"] - frame["span"] * 0.25)
        x_of, y_of, row = geometry(image, *pitch_bounds(frame["notes"]), t0, t0 + frame["span"])
        return frame, image, x_of, y_of, row

    for shot in (0.5, 2.6):
        frame, image, x_of, y_of, row = look(shot)
        # the playhead: a bright line at the playing time
        x = int(x_of(frame["now"]))
        column = [tuple(image.get_at((x, y)))[:3] for y in range(10, image.get_height() - 10, 7)]
        assert column.count(PLAYHEAD) > 0.8 * len(column), shot
        checked = 0
        for start, end, pitch, velocity, program, is_new in frame["notes"]:
            x0, x1 = max(40, x_of(start)), x_of(end)
            if x1 - x0 < 6 or x1 > image.get_width() or abs((x0 + x1) / 2 - x) < 4:
                continue  # off screen or under the playhead
            r, g, b = tuple(image.get_at((int((x0 + x1) / 2), int(y_of(pitch) + row / 2))))[:3]
            shade = 0.55 + 0.45 * velocity / 127
            expected = GENERATED if is_new else PRIMER
            assert (r, g, b) == tuple(int(c * shade) for c in expected), (shot, start, pitch, is_new)
            checked += 1
        assert checked >= 8, shot

    # scrolling: at 0.5 s the view starts at 0; at 2.6 s it has moved on, and the first primer note is gone
    first, later = look(0.5), look(2.6)
    assert first[2](0.0) == 40 and later[2](0.0) < 40

    # space froze the playing clock for the pause, and Esc ended playback before the piece's end (4 s)
    log = np.array(record["log"])
    frozen = log[(log[:, 1] > 0.9) & (log[:, 1] < 2.0)]
    walls_at_same_time = [frozen[frozen[:, 1] == now][:, 0] for now in np.unique(frozen[:, 1])]
    assert max(w.max() - w.min() for w in walls_at_same_time) >= 0.5
    assert 3.0 <= log[-1, 1] < 3.5


def test_jam_answers_even_if_a_note_off_was_lost():
    """A dropped note-off must not silence the jam for good: after four bars it counts as released."""
    import mido

    from melodylstm.jam import Jam

    jam = Jam(generator=None, respond=None, tempo=120)  # one bar = 2 s
    jam.feed(mido.Message("note_on", note=60, velocity=90), 0.0)
    jam.feed(mido.Message("note_on", note=64, velocity=90), 0.5)
    jam.feed(mido.Message("note_off", note=64), 1.0)  # the note-off of 60 never comes
    assert not jam.ready(5.0)  # still held, and not yet four bars of silence
    assert jam.ready(9.1)
    assert sorted(p[2] for p in jam.phrase) == [60, 64]
