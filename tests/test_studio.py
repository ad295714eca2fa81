"""`melodylstm studio`, headless: the real window under SDL's dummy video driver, its sound
captured by the disk audio driver, driven by posted pygame events. Every window runs in a child
process (SDL state never leaks between tests); one run serves several tests."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from melodylstm.midi import Song, read_midi_tracks, write_midi
from melodylstm.pianoroll import BAR_LINE, GENERATED, PLAYHEAD, PRIMER, geometry, shaded
from melodylstm.studio import ANSWER_TRACK, PHRASE_TRACK, Session

from helpers import SR, onsets, read_wav

ENV = {**os.environ, "SDL_NO_SIGNAL_HANDLERS": "1", "PYGAME_HIDE_SUPPORT_PROMPT": "1", "SDL_VIDEODRIVER": "dummy",
       "SDL_AUDIODRIVER": "disk"}

# The child: runs `melodylstm studio ARGS` with a hook that plays a script of steps, one after
# another, each after `wait` seconds and once its condition holds; at the end it writes what
# the window did to log.json.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys, time
    import pygame
    from melodylstm import studio
    from melodylstm.cli import cli

    folder, steps, args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    state = {"i": 0, "since": None, "shots": {}}

    def ready(app, until):
        if until == "answered":  # the answer is sampled and placed
            return app.answers >= 1 and app.job is None
        if until == "saved":
            return any(m.startswith(("saved", "cannot save")) for m in app.messages)
        if until == "played":  # nothing sounds any more
            return app.audio.busy_until() < app.audio.now()
        return True

    def key(name, up=True, mod=0):
        code = getattr(pygame, "K_" + name)
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code, mod=mod))
        if up:
            pygame.event.post(pygame.event.Event(pygame.KEYUP, key=code, mod=mod))

    def dump(app):
        parts = [{"kind": p.kind, "notes": p.notes} for p in app.session.parts]
        with open(os.path.join(folder, "log.json"), "w") as f:
            json.dump({"parts": parts, "messages": app.messages, "shots": state["shots"],
                       "events": app.events}, f)

    def hook(app):
        now = time.monotonic()
        state["since"] = state["since"] or now
        while state["i"] < len(steps):
            step = steps[state["i"]]
            if now - state["since"] < step.get("wait", 0) or not ready(app, step.get("until")):
                return
            do = step["do"]
            if do == "down":
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=getattr(pygame, "K_" + step["key"]), mod=0))
            elif do == "up":
                pygame.event.post(pygame.event.Event(pygame.KEYUP, key=getattr(pygame, "K_" + step["key"]), mod=0))
            elif do == "key":
                key(step["key"], mod=pygame.KMOD_CTRL if step.get("ctrl") else 0)
            elif do == "drop":
                pygame.event.post(pygame.event.Event(pygame.DROPFILE, file=step["file"]))
            elif do == "midi":  # a MIDI keyboard: a fake port the loop polls
                import mido
                on, off = now, [mido.Message("note_off", note=step["note"])]
                first = [mido.Message("note_on", note=step["note"], velocity=96)]
                def pending(port):  # note-on at once, note-off 0.3 s later
                    return first and [first.pop()] or (off if time.monotonic() - on > 0.3 else [])
                app.inport = type("Port", (), {"iter_pending": pending})()
            elif do == "shot":
                pygame.image.save(app.screen, os.path.join(folder, step["name"] + ".png"))
                state["shots"][step["name"]] = dict(app.view, notes=app.session.roll_notes())
            elif do == "quit":
                dump(app)
                pygame.event.post(pygame.event.Event(pygame.QUIT))
            elif do == "signal":
                dump(app)
                os.kill(os.getpid(), getattr(signal, step["signal"]))
            state["i"] += 1
            state["since"] = now

    studio.Studio.on_frame = hook
    cli.main(args, prog_name="melodylstm")
""")


def run_studio(tmp_path, steps, *args, env=None, timeout=60):
    env = {**ENV, "SDL_DISKAUDIOFILE": str(tmp_path / "capture.raw"), **(env or {})}
    result = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), json.dumps(steps), "studio", *args],
                            capture_output=True, text=True, env=env, timeout=timeout)
    log = json.loads((tmp_path / "log.json").read_text()) if (tmp_path / "log.json").exists() else None
    return result, log


def capture(path):
    data = np.fromfile(path, dtype="<i2")
    return data[: len(data) // 2 * 2].reshape(-1, 2)[:, 0] / 32768.0


def pitch_at(signal, start, seconds=0.2):
    piece = signal[int(start * SR): int((start + seconds) * SR)]
    spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
    hz = np.fft.rfftfreq(len(piece), 1 / SR)[spectrum.argmax()]
    return 69 + 12 * np.log2(hz / 440.0)


def midi_parts(path):
    """Track name -> all its notes as one Song (an answer has a track per instrument)."""
    out = {}
    for name, part in read_midi_tracks(path, 96):
        if name in out:
            part = Song(np.concatenate([out[name].notes, part.notes]), 96, part.tempos, part.time_signatures)
        out[name] = part
    return out


def is_shade_of(pixel, colour):
    return any(tuple(pixel) == shaded(colour, v) for v in range(1, 128))


# ---------------------------------------------------------------- run A: play, answer, save, close

@pytest.fixture(scope="module")
def typed_session(tmp_path_factory, untrained_checkpoint):
    """Three typed notes (C4 E4 A4), a note from a MIDI keyboard (C5), Enter for an answer, a
    screenshot, Ctrl+S, one more note, then the window is closed (that note is autosaved)."""
    folder = tmp_path_factory.mktemp("typed")
    steps = [{"wait": 0.6, "do": "down", "key": "a"}, {"wait": 0.3, "do": "up", "key": "a"},
             {"wait": 0.15, "do": "down", "key": "d"}, {"wait": 0.3, "do": "up", "key": "d"},
             {"wait": 0.15, "do": "down", "key": "h"}, {"wait": 0.3, "do": "up", "key": "h"},
             {"wait": 0.3, "do": "midi", "note": 72},
             {"wait": 0.4, "do": "key", "key": "RETURN"},
             {"until": "answered", "wait": 0.5, "do": "shot", "name": "answer"},
             {"do": "key", "key": "s", "ctrl": True},
             {"until": "saved", "do": "key", "key": "k"},
             {"wait": 0.3, "do": "quit"}]
    # two bars: an untrained model's one-bar answer (from the bar line) is now and then one whole note
    result, log = run_studio(folder, steps, "-c", str(untrained_checkpoint), "--out", str(folder / "session"),
                             "--synth", "numpy", "--no-metronome", "--seed", "3", "--bars", "2")
    return folder, result, log


def test_typed_keys_sound_at_once_in_tune(typed_session):
    folder, result, log = typed_session
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    audio = capture(folder / "capture.raw")
    heard = onsets(audio)
    keys = [e for e in log["events"] if e[2] == "key"]
    assert [e[3] for e in keys][:4] == [60, 64, 69, 72]
    # the first four sounds are the four keys, in tune, and spaced as they were played
    assert [round(pitch_at(audio, t + 0.02)) for t in heard[:4]] == [60, 64, 69, 72]
    played = np.diff([e[1] for e in keys[:4]])
    assert np.allclose(np.diff(heard[:4]), played, atol=0.04), (heard[:4], played)


def test_typed_keys_and_answer_are_saved_as_midi_and_wav(typed_session):
    folder, result, log = typed_session
    parts = midi_parts(folder / "session" / "session.mid")
    assert set(parts) == {PHRASE_TRACK, ANSWER_TRACK}
    assert parts[PHRASE_TRACK].notes[:, 2].tolist() == [60, 64, 69, 72]  # sorted by onset
    answer = [p for p in log["parts"] if p["kind"] == "answer"][0]["notes"]
    assert len(parts[ANSWER_TRACK].notes) == len(answer) > 0
    # the WAV is the MIDI file rendered: same length, first note in tune at the start
    wav = read_wav(folder / "session" / "session.wav")
    song_end = max(p.seconds() for p in parts.values())
    assert song_end < len(wav) / SR < song_end + 1.0
    assert round(pitch_at(wav, onsets(wav)[0] + 0.02)) == 60


def test_answer_is_drawn_in_its_own_colour_with_bar_lines_and_playhead(typed_session):
    import pygame

    folder, result, log = typed_session
    shot = log["shots"]["answer"]
    image = pygame.image.load(str(folder / "answer.png"))
    roll = image.subsurface((0, 0, *shot["size"]))
    x_of, y_of, row = geometry(roll, shot["low"], shot["high"], shot["t0"], shot["t1"])
    seen = {True: 0, False: 0}
    for start, end, pitch, velocity, program, is_answer in shot["notes"]:
        x0, x1 = max(40, x_of(start)), x_of(end)
        if x1 - x0 < 6 or x1 > roll.get_width() or abs((x0 + x1) / 2 - x_of(shot["now"])) < 4:
            continue
        pixel = tuple(roll.get_at((int((x0 + x1) / 2), int(y_of(pitch) + row / 2))))[:3]
        assert is_shade_of(pixel, GENERATED if is_answer else PRIMER), (pixel, is_answer, pitch)
        seen[is_answer] += 1
    # an answer to single notes is one voice (continue keeps the phrase's texture): fewer notes
    assert seen[True] >= 2 and seen[False] >= 3, (seen, shot["notes"], shot["now"], shot["t0"], shot["t1"])
    # the playhead at the time the frame was drawn
    x = int(x_of(shot["now"]))
    column = [tuple(roll.get_at((x, y)))[:3] for y in range(35, roll.get_height(), 7)]
    assert column.count(PLAYHEAD) > 0.8 * len(column)
    # bar lines at the bar starts of the session's grid (120 bpm, 4/4: every 2 s)
    bars = [t for t in np.arange(0, shot["t1"], 2.0) if shot["t0"] < t and abs(t - shot["now"]) > 0.05]
    assert bars
    for t in bars:
        column = [tuple(roll.get_at((int(round(x_of(t))), y)))[:3] for y in range(2, roll.get_height(), 5)]
        assert column.count(BAR_LINE) > 0.3 * len(column), t


def test_closing_autosaves_unsaved_work(typed_session):
    folder, result, log = typed_session
    assert "window closed: autosaved" in result.stderr
    parts = midi_parts(folder / "session" / "autosave.mid")
    assert parts[PHRASE_TRACK].notes[:, 2].tolist() == [60, 64, 69, 72, 72]  # K: the C above, after the save


# ---------------------------------------------------------------- run B: dropped files, SIGTERM

def test_dropped_files_bad_ones_refused_a_midi_file_continued(tmp_path, untrained_checkpoint):
    text, broken, good = tmp_path / "notes.txt", tmp_path / "broken.mid", tmp_path / "phrase.mid"
    text.write_text("not music")
    broken.write_bytes(b"MThd\x00\x00\x00\x06garbage")
    write_midi(Song(np.array([[i * 12, 12, [62, 65, 69, 74][i], 90, 0] for i in range(4)]), 12, [(0, 500000)]),
               good)
    steps = [{"wait": 0.3, "do": "drop", "file": str(text)}, {"wait": 0.2, "do": "drop", "file": str(broken)},
             {"wait": 0.2, "do": "drop", "file": str(good)},
             {"until": "answered", "do": "shot", "name": "file"},
             {"wait": 0.2, "do": "signal", "signal": "SIGTERM"}]
    result, log = run_studio(tmp_path, steps, "-c", str(untrained_checkpoint), "--out", str(tmp_path / "s"),
                             "--synth", "numpy", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot load notes.txt: not a MIDI file" in result.stderr
    assert "cannot load broken.mid: unreadable MIDI" in result.stderr
    kinds = [p["kind"] for p in log["parts"]]
    assert kinds == ["phrase", "answer"]
    phrase, answer = log["parts"]
    assert [n[2] for n in phrase["notes"]] == [62, 65, 69, 74]
    # the answer continues the file in place (from its last onset on), on its grid (1/12 beat)
    starts = np.array([n[0] for n in answer["notes"]])
    assert len(starts) and starts.min() >= phrase["notes"][-1][0] - 1e-6
    steps = (starts - phrase["notes"][0][0]) / (0.5 / 12)
    assert np.allclose(steps, np.round(steps), atol=1e-6)
    assert "SIGTERM: autosaved" in result.stderr
    assert len(midi_parts(tmp_path / "s" / "autosave.mid")) == 2  # a loaded file counts as work


# ---------------------------------------------------------------- run C: faults

def test_no_audio_device_unwritable_folder_missing_control_session_goes_on(tmp_path, untrained_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the session folder should be")
    steps = [{"wait": 0.3, "do": "down", "key": "a"}, {"wait": 0.2, "do": "up", "key": "a"},
             {"do": "key", "key": "s", "ctrl": True}, {"until": "saved", "do": "key", "key": "SLASH"},
             {"wait": 0.1, "do": "quit"}]
    result, log = run_studio(tmp_path, steps, "-c", str(untrained_checkpoint), "--out", str(blocker / "session"),
                             "--style", "jazz", env={"SDL_AUDIODRIVER": "no_such_driver"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "no audio device" in result.stderr and "the session goes on" in result.stderr
    assert "this model has no style control" in result.stderr
    assert f"cannot save into {blocker / 'session'}" in result.stderr
    assert "cannot autosave into" in result.stderr and "window closed: autosaved 1 notes to " in result.stderr
    fallback = result.stderr.split("autosaved 1 notes to ")[1].split()[0]
    assert midi_parts(fallback)[PHRASE_TRACK].notes[:, 2].tolist() == [60]


# ---------------------------------------------------------------- the session without a window

def test_session_api_answer_undo_save(tmp_path, untrained_checkpoint):
    from melodylstm.generate import Generator

    session = Session(bpm=120)
    for i, pitch in enumerate([60, 62, 64, 65]):
        session.add_note(pitch, 0.5 * i, 0.5 * i + 0.4, velocity=90)
    answer = session.answer(Generator.load(untrained_checkpoint), bars=2, seed=1)
    assert answer.notes and min(n[0] for n in answer.notes) == pytest.approx(4.0)  # a bar of silence, on the beat
    primer, crop = session.primer()
    assert len(primer.notes) == 4 + len(answer.notes) and crop == 0
    paths = session.save(tmp_path / "take", synth="numpy")
    parts = midi_parts(paths[0])
    assert parts[PHRASE_TRACK].notes[:, 2].tolist() == [60, 62, 64, 65]
    assert len(parts[ANSWER_TRACK].notes) == len(answer.notes)
    assert len(read_wav(paths[1])) / SR > 4.0
    assert not session.dirty
    assert session.undo() is answer and session.dirty
    assert [p.kind for p in session.parts] == ["phrase"]


def test_session_edits_remove_the_very_part_and_retime_from_the_next_bar():
    session = Session(bpm=120)
    session.add_note(60, 0.0, 0.4)
    first, second = session.begin_answer(seed=1), session.begin_answer(seed=1)  # equal, field by field
    session.mark_saved(session.version)
    assert session.remove(second) and session.parts[-1] is first  # that one, not the first equal one
    assert not session.dirty  # an empty part removed changes nothing to save
    session.extend_answer(first, [[4.0, 4.5, 62, 90, 0]])
    assert session.dirty and session.note_count() == 2
    session.mark_saved(session.version)
    assert session.remove(first) and session.dirty and not session.remove(first)
    session.retime(3.0, bpm=60)  # notes recorded: from the next bar line (4 s) on
    assert session.tempo_map.seconds(8 * 480) == pytest.approx(4.0) and session.tempo_map.seconds(9 * 480) == pytest.approx(5.0)
    empty = Session(bpm=120)
    empty.retime(3.0, bpm=60, metre=(3, 4))  # nothing recorded: the grid moves from time 0
    assert empty.tempo_map.seconds(480) == pytest.approx(1.0) and empty.tempo_map.signatures == [(0, 3, 4)]


def test_piano_roll_colours_tracks_apart_unless_some_notes_are_the_models():
    from melodylstm.pianoroll import INSTRUMENTS, note_colours

    tracks = [(0, 1, 60, 90, 0, False, 0), (0, 1, 64, 90, 0, False, 1), (0, 1, 36, 90, 128, False, 2)]
    colour = note_colours(tracks)
    assert [colour(n) for n in tracks[:2]] == INSTRUMENTS[:2] and colour(tracks[2]) not in INSTRUMENTS
    answered = tracks + [(1, 2, 62, 90, 0, True, 3)]
    colour = note_colours(answered)
    assert [colour(n) for n in answered] == [PRIMER, PRIMER, PRIMER, GENERATED]


def test_stuck_stream_channel_moves_on():
    """The pygame race that leaves a block queued on an idle channel: the stream plays it on the
    next reserved channel instead of falling silent for good."""
    from melodylstm import playback

    class Channel:
        def __init__(self, i):
            self.i, self.queued, self.busy = i, "block", False

        def get_busy(self):
            return self.busy

        def get_queue(self):
            return self.queued

        def play(self, sound):
            self.played, self.busy, self.queued = sound, True, None

    output = playback.PygameOutput.__new__(playback.PygameOutput)
    output.pygame = type("pg", (), {"mixer": type("m", (), {"Channel": Channel})})()
    output.spares, output.channel, output.stuck_since, output.restarts = iter([1, 2]), Channel(0), None, 0
    output._unstick()
    assert output.channel.i == 0  # not yet: the mixer may only be late
    time.sleep(playback.STUCK_SECONDS)
    output._unstick()
    assert output.channel.i == 1 and output.channel.played == "block" and output.restarts == 1


# ---------------------------------------------------------------- controls and options, checked first

def test_controls_the_model_lacks_are_left_out_with_a_message(untrained_checkpoint):
    """The studio's key and style reach the model only if its checkpoint has those controls;
    otherwise the answer comes without them and the status line says so."""
    from melodylstm.generate import Generator
    from melodylstm.studio import Answerer, NullAudio, sample_answer, supported_controls

    plain, full = Generator.load(untrained_checkpoint), Generator.load()
    assert supported_controls(plain) == set()  # trained without controls
    assert {"key", "style"} <= supported_controls(full)
    said = []
    session = Session()
    session.add_note(60, 0.0, 0.4)
    session.add_note(64, 0.5, 0.9)
    answerer = Answerer(session, plain, NullAudio(), None, lambda text, **kw: said.append(text), [],
                        bars=1, key="D:minor", style="tune")
    kwargs = answerer.controls()
    assert "key" not in kwargs and "style" not in kwargs
    assert said == ["this model has no key control: answering without key D:minor",
                    "this model has no style control: answering without style tune"]
    reports = []  # and the answer comes (the model would refuse a key it was not trained with)
    sample_answer(plain, session.primer()[0], kwargs, 1, lambda kind, payload: reports.append(kind), lambda: False)
    assert reports[-1] == "done" and "note" in reports
    said.clear()
    answerer.gen = full
    kwargs = answerer.controls()
    assert (kwargs["key"], kwargs["style"], said) == ("D:minor", "tune", [])


@pytest.mark.parametrize("args, error", [
    (["--key", "Q:lydian"], "Error: unknown key 'Q:lydian'"),
    (["--key", "C:lydian"], "Error: --key C:lydian: the studio keeps answers in major and minor keys"),
    (["--style", "\N{VIOLIN}"], "Error: unknown style '\N{VIOLIN}': this model knows chorale, tune"),
    (["missing.mid"], "Error: cannot load missing.mid: cannot read"),
    (["junk.mid"], "Error: cannot load junk.mid: not a MIDI file"),
    (["empty.mid"], "Error: cannot load empty.mid: the file has no notes"),
    (["--bars", "0"], "Error: --bars must be 1 or more"),
    (["-t", "-1"], "Error: --bars must be 1 or more, --temperature and --pause 0 or more"),
])
def test_bad_options_and_files_exit_1_before_the_window_opens(tmp_path, monkeypatch, args, error):
    from click.testing import CliRunner

    from melodylstm.cli import cli
    from melodylstm.studio import window

    (tmp_path / "junk.mid").write_text("not music")
    write_midi(Song(np.zeros((0, 5), dtype=np.int64), 12, [(0, 500000)]), tmp_path / "empty.mid")
    opened = []
    monkeypatch.setattr(window.Studio, "run", lambda app: opened.append(app) or 0)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["studio", *args, "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and not opened, result.output
    assert result.output.startswith(error) and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "s").exists()


def test_good_options_and_file_open_the_window(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from melodylstm.cli import cli
    from melodylstm.studio import NullAudio, window

    def no_process(checkpoint):
        raise OSError("not in this test")

    write_midi(Song(np.array([[0, 12, 62, 90, 0], [12, 12, 65, 90, 0]]), 12, [(0, 500000)]), tmp_path / "p.mid")
    opened = []
    monkeypatch.setattr(window.Studio, "run", lambda app: opened.append(app) or 0)
    monkeypatch.setattr(window, "SamplerProcess", no_process)
    monkeypatch.setattr(window, "open_audio", lambda synth, soundfont, messages: NullAudio())
    result = CliRunner().invoke(cli, ["studio", str(tmp_path / "p.mid"), "--key", "D:minor", "--style", "tune",
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    (app,) = opened
    assert (app.answerer.key, app.answerer.style) == ("D:minor", "tune")
    assert [n[2] for n in app.session.parts[0].notes] == [62, 65]  # the file, read once before the window
    app.answerer.cancel()


# ---------------------------------------------------------------- generate --play and Ctrl-C

def test_ctrl_c_during_play_writes_the_file_and_exits_0(tmp_path, untrained_checkpoint):
    out = tmp_path / "g.mid"
    env = {**ENV, "SDL_DISKAUDIOFILE": str(tmp_path / "capture.raw")}
    proc = subprocess.Popen([sys.executable, "-m", "melodylstm", "generate", "-c", str(untrained_checkpoint),
                             "--bars", "16", "--seed", "2", "--play", "--synth", "numpy", "-o", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if line.startswith("wrote") or not line:
            break
    time.sleep(0.3)  # still playing: 16 bars take 32 s
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=20)[1]
    assert proc.returncode == 0, "".join(lines) + rest
    assert out.exists() and "stopped" in rest and "Aborted" not in rest and "Traceback" not in rest
