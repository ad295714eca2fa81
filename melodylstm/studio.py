"""`melodylstm studio`: play to the model in one window, call and response.

Three layers, each usable without the ones above it:

* `Session`: the piece, no window and no sound. Phrases (played or loaded) and answers (the
  model's) as notes in seconds on the session's clock, a tempo map and metre, undo, the primer
  the model continues, and saving (MIDI with phrases and answers on separate tracks, and WAV).
      s = Session(); s.add_note(60, 0.0, 0.5); s.answer(Generator.load()); s.save("take1")
* `Audio`: one continuous stream. Answers, loaded files and the metronome are rendered block by
  block (playback.BlockRenderer); keys sound through pre-rendered notes on their own mixer
  channels, so a key is heard at the mixer's next buffer rather than after the stream's
  render-ahead. `NullAudio` keeps the session going when there is no audio device.
* `Studio`: the pygame window and its event loop: musical typing, a MIDI keyboard, answers after
  a pause (sampled in a worker thread and drawn as they arrive), controls, files, help.
"""
from __future__ import annotations

import collections
import heapq
import inspect
import itertools
import math
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import CONTINUE_TEMPERATURE
from .midi import DRUMS, BarGrid, MidiError, Song, crop_song, steps_to_seconds

TICKS = 480  # the session clock's ticks per quarter note: exact for every metre and the model's grid
SAVE_RESOLUTION = 96  # steps per quarter in saved files: keeps the feel of live playing (5 ms at 120 bpm)
ANSWER_TRACK = "melodylstm answer"  # `melodylstm show` draws tracks named melodylstm... as the model's
PHRASE_TRACK = "phrases"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------- time: tempo and metre

class Meter:
    """The session's tempo map and metre, in ticks; a change starts at the next bar line, so the
    bars already played keep their places."""

    def __init__(self, bpm: float = 120.0, metre=(4, 4)):
        self.tempos = [(0, round(60e6 / bpm))]  # (tick, microseconds per quarter)
        self.signatures = [(0, int(metre[0]), int(metre[1]))]  # (tick, numerator, denominator)

    @property
    def bpm(self) -> float:
        return 60e6 / self.tempos[-1][1]

    @property
    def metre(self) -> tuple[int, int]:
        return self.signatures[-1][1], self.signatures[-1][2]

    def seconds(self, tick):
        """Seconds of a tick, or of an array of ticks."""
        out = steps_to_seconds(np.asarray(tick, dtype=np.float64), self.tempos, TICKS)
        return float(out) if np.ndim(out) == 0 else out

    def tick_at(self, seconds):
        """Ticks (fractional) at a time, or at an array of times."""
        ticks = np.array([t for t, _ in self.tempos], dtype=np.float64)
        starts = np.atleast_1d(self.seconds(ticks))
        per_second = np.array([1e6 / us * TICKS for _, us in self.tempos])
        at = np.asarray(seconds, dtype=np.float64)
        i = np.clip(np.searchsorted(starts, at, side="right") - 1, 0, len(starts) - 1)
        out = ticks[i] + (at - starts[i]) * per_second[i]
        return float(out) if np.ndim(out) == 0 else out

    def bar_grid(self) -> BarGrid:
        return BarGrid(self.signatures, TICKS)

    def bar_start(self, tick: float) -> int:
        """The bar line at or before `tick`."""
        grid = self.bar_grid()
        return grid.start(max(0, grid.index_at_or_after(math.floor(tick) + 1) - 1))

    def next_bar(self, seconds: float) -> int:
        grid = self.bar_grid()
        return grid.start(grid.index_at_or_after(math.ceil(self.tick_at(seconds) - 1e-6)))

    def next_beat(self, seconds: float) -> float:
        tick = self.tick_at(seconds)
        start = self.bar_start(tick)
        beat = self.beat_ticks(start)
        return self.seconds(start + math.ceil((tick - start) / beat - 1e-9) * beat)

    def next_step(self, seconds: float, resolution: int) -> float:
        """The first point of the model's grid at or after `seconds`."""
        size = TICKS / resolution
        return self.seconds(math.ceil(self.tick_at(seconds) / size - 1e-9) * size)

    def beats(self, t0: float, t1: float) -> list[tuple[float, bool]]:
        """(seconds, is a bar line) of every beat in [t0, t1): the metronome's clicks."""
        tick = self.tick_at(max(0.0, t0))
        grid = self.bar_grid()
        index = max(0, grid.index_at_or_after(math.floor(tick) + 1) - 1)
        out = []
        while True:
            start, end = grid.start(index), grid.start(index + 1)
            beat = self.beat_ticks(start)
            for at in range(start, end, beat):
                when = self.seconds(at)
                if when >= t1:
                    return out
                if when >= t0:
                    out.append((when, at == start))
            index += 1

    def beat_ticks(self, tick: int) -> int:
        denominator = [d for t, n, d in self.signatures if t <= tick][-1]
        return TICKS * 4 // denominator

    def bar_seconds(self) -> float:
        numerator, denominator = self.metre
        return numerator * 4 / denominator * 60.0 / self.bpm

    def change(self, at_seconds: float, bpm: float | None = None, metre=None) -> None:
        tick = self.next_bar(at_seconds)
        if bpm is not None:
            self.tempos = [t for t in self.tempos if t[0] < tick] + [(tick, round(60e6 / bpm))]
        if metre is not None:
            self.signatures = [s for s in self.signatures if s[0] < tick] + [(tick, int(metre[0]), int(metre[1]))]

    def restart(self, bpm: float, metre) -> None:
        """A new map from time 0 (nothing is recorded yet, so nothing moves)."""
        self.tempos, self.signatures = [(0, round(60e6 / bpm))], [(0, int(metre[0]), int(metre[1]))]

    def maps(self, resolution: int):
        """The tempo map and metre in steps of `resolution` per quarter (a Song's)."""
        def step(tick):
            return round(tick * resolution / TICKS)

        return [(step(t), us) for t, us in self.tempos], [(step(t), n, d) for t, n, d in self.signatures]

    def grid(self):
        from .pianoroll import Grid

        return Grid(self.tempos, self.signatures, TICKS)


# ---------------------------------------------------------------- the piece

@dataclass
class Part:
    """A phrase (played, or a loaded file) or an answer; notes are [start s, end s, pitch, velocity, program]."""

    kind: str  # "phrase" or "answer"
    notes: list = field(default_factory=list)
    name: str = ""
    seed: int | None = None
    open: bool = False  # a phrase still being played: new notes join it


class Placement:
    """Where an answer's notes go. The model writes steps in the primer's coordinates; `origin`
    (seconds) puts its first note there (its leading rest is dropped: the pause was the rest),
    None continues in place, right where the primer ends (after a loaded file)."""

    def __init__(self, meter: Meter, resolution: int, crop: int, origin: float | None = None):
        self.meter, self.size = meter, TICKS / resolution
        self.origin, self.base = origin, crop * TICKS / resolution if origin is None else None

    def place(self, note) -> list:
        return self.place_all([note])[0]

    def place_all(self, notes) -> list:
        """[start s, end s, pitch, velocity, program] for model notes (onset, duration, pitch, velocity, program)."""
        notes = np.asarray(notes, dtype=np.int64).reshape(-1, 5)
        if not len(notes):
            return []
        if self.base is None:  # the first note fixes where step 0 lies
            self.base = self.meter.tick_at(self.origin) - int(notes[0, 0]) * self.size
        start = self.base + notes[:, 0] * self.size
        times = np.atleast_1d(self.meter.seconds(np.concatenate([start, start + notes[:, 1] * self.size])))
        n = len(notes)
        return [[float(a), float(b), *row] for a, b, row in zip(times[:n], times[n:], notes[:, 2:].tolist())]


class Session:
    """The call-and-response piece: no window, no sound; every studio action is a method here."""

    def __init__(self, bpm: float = 120.0, metre=(4, 4), resolution: int = 12):
        self.meter = Meter(bpm, metre)
        self.resolution = resolution  # the model's grid (the primer is written on it)
        self.parts: list[Part] = []
        self.held = {}  # pitch -> (start s, velocity, program): keys down now
        self.last_release = None  # seconds of the last note-off of a played note
        self.last_note_on = None
        self.version = 0  # bumped by every change: the window redraws, autosave knows
        self.saved_version = 0
        self._end = (None, 0.0)  # (version, end): the loop asks often
        self._roll = (None, [])
        self._range = (None, ())

    # ------------------------------------------------------------ notes

    @property
    def dirty(self) -> bool:
        return self.version != self.saved_version and self.note_count() > 0

    def note_count(self) -> int:
        return sum(len(p.notes) for p in self.parts)

    def _touch(self):
        self.version += 1

    def phrase(self) -> Part:
        """The phrase being played; a new one after an answer or a loaded file."""
        if not self.parts or not self.parts[-1].open:
            for part in self.parts:
                part.open = False
            self.parts.append(Part("phrase", open=True))
        return self.parts[-1]

    def note_on(self, pitch: int, velocity: int, at: float, program: int = 0) -> None:
        if pitch in self.held:
            self.note_off(pitch, at)
        self.held[pitch] = (at, velocity, program)
        self.last_note_on = at  # no _touch(): a held note is drawn apart and saved once released

    def note_off(self, pitch: int, at: float) -> None:
        if pitch not in self.held:
            return
        start, velocity, program = self.held.pop(pitch)
        self.phrase().notes.append([start, max(at, start + 0.01), pitch, velocity, program])
        self.last_release = at
        self._touch()

    def add_note(self, pitch: int, start: float, end: float, velocity: int = 100, program: int = 0) -> None:
        """A whole played note at once (the Python API's way to play)."""
        self.note_on(pitch, velocity, start, program)
        self.note_off(pitch, end)

    def end(self) -> float:
        """Seconds at which the last note ends (0 for an empty session)."""
        if self._end[0] != self.version:
            self._end = (self.version, max((n[1] for p in self.parts for n in p.notes), default=0.0))
        return self._end[1]

    def unanswered(self) -> bool:
        return bool(self.parts) and self.parts[-1].kind == "phrase" and bool(self.parts[-1].notes)

    def roll_notes(self) -> list:
        """(start, end, pitch, velocity, program, is_answer) for the piano roll (kept per version:
        the window asks 30 times a second)."""
        if self._roll[0] != self.version:
            self._roll = (self.version, [(*n, p.kind == "answer") for p in self.parts for n in p.notes])
        return self._roll[1]

    def pitch_range(self) -> tuple:
        """(lowest, highest) pitch of all notes, () for none."""
        if self._range[0] != self.version:
            notes = self.roll_notes()
            self._range = (self.version, (min(n[2] for n in notes), max(n[2] for n in notes)) if notes else ())
        return self._range[1]

    def held_notes(self, now: float) -> list:
        """Keys down now, as notes that end now (they grow in the piano roll)."""
        return [(s, max(now, s + 0.01), pitch, v, prog, False) for pitch, (s, v, prog) in self.held.items()]

    def undo(self) -> Part | None:
        """Remove the last answer or phrase (notes still held are dropped with it)."""
        self.held.clear()
        while self.parts and not self.parts[-1].notes and self.parts[-1].kind == "phrase":
            self.parts.pop()  # an empty phrase is nothing to undo
        if not self.parts:
            return None
        part = self.parts.pop()
        self._touch()
        return part

    # ------------------------------------------------------------ the model

    def song(self, resolution: int, parts=None, crop: bool = True) -> tuple[Song, int]:
        """Parts (default: all) as one Song at `resolution`, cropped to the bar of the first note.
        Returns the song and the step it was cropped at."""
        parts = self.parts if parts is None else parts
        tempos, signatures = self.meter.maps(resolution)
        rows = np.array([n for part in parts for n in part.notes], dtype=np.float64).reshape(-1, 5)
        onsets = np.maximum(0, np.round(self.meter.tick_at(rows[:, 0]) * resolution / TICKS))
        stops = np.round(self.meter.tick_at(rows[:, 1]) * resolution / TICKS)
        notes = np.column_stack([onsets, np.maximum(1, stops - onsets), rows[:, 2:]]).astype(np.int64)
        song = Song(notes, resolution, tempos, signatures)
        if not crop or not len(song.notes):
            return song, 0
        grid = song.bar_grid()
        first = int(song.notes[:, 0].min())
        start = grid.start(max(0, grid.index_at_or_after(first + 1) - 1))
        return crop_song(song, start), start

    def primer(self, parts=None) -> tuple[Song, int]:
        """What the model continues: the whole session so far, on the model's grid."""
        song, crop = self.song(self.resolution, parts)
        if not len(song.notes):
            raise ValueError("play something first: the session has no notes to answer")
        return song, crop

    def pause_end(self, pause: float) -> float:
        """When an answer to the last phrase comes in: the first beat at least `pause` seconds
        after the last note (played or answered) ended."""
        silence = max(self.last_release or 0.0, self.end())
        return self.meter.next_beat(silence + pause)

    def answer(self, generator, bars: int = 2, temperature: float = CONTINUE_TEMPERATURE, seed=None,
               at: float | None = None, pause: float | None = None, **controls) -> Part:
        """Sample an answer to the whole session and add it. It starts `at` seconds (default: on
        the first beat after a bar of silence, as the window does)."""
        primer, crop = self.primer()
        origin = at if at is not None else self.pause_end(self.meter.bar_seconds() if pause is None else pause)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        result = generator.continue_(primer, bars=bars, temperature=temperature, seed=seed, **controls)[0]
        return self.add_answer(result.notes.notes, Placement(self.meter, self.resolution, crop, origin), seed)

    def add_answer(self, notes, placement: Placement, seed=None) -> Part:
        part = self.begin_answer(seed)
        part.notes.extend(placement.place_all(notes))
        self._touch()
        return part

    def begin_answer(self, seed=None) -> Part:
        for part in self.parts:
            part.open = False
        part = Part("answer", seed=seed)
        self.parts.append(part)
        self._touch()
        return part

    # ------------------------------------------------------------ files

    def load(self, source, at: float, resolution: int = SAVE_RESOLUTION) -> Part:
        """A MIDI file (path or bytes) as a new phrase whose first bar starts at `at` seconds;
        the session takes the file's tempo and metre from there."""
        from .midi import read_midi, read_midi_bytes

        song = read_midi_bytes(source, resolution) if isinstance(source, (bytes, bytearray)) else read_midi(source, resolution)
        if not len(song.notes):
            raise MidiError("the file has no notes")
        grid = song.bar_grid()
        first = int(song.notes[:, 0].min())
        song = crop_song(song, grid.start(max(0, grid.index_at_or_after(first + 1) - 1)))
        bpm, metre = 60e6 / song.tempos[0][1], song.time_signatures[0][1:]
        if self.note_count() == 0:
            self.meter.restart(bpm, metre)
        else:
            self.meter.change(at, bpm, metre)
        start = self.meter.seconds(self.meter.next_bar(at))
        onsets = song.seconds(song.notes[:, 0])
        ends = song.seconds(song.notes[:, 0] + song.notes[:, 1])
        notes = [[start + float(s), start + float(e), p, v, prog]
                 for (_, _, p, v, prog), s, e in zip(song.notes.tolist(), np.atleast_1d(onsets), np.atleast_1d(ends))]
        for part in self.parts:
            part.open = False
        name = os.path.basename(os.fspath(source)) if not isinstance(source, (bytes, bytearray)) else "file"
        part = Part("phrase", notes, name=name)
        self.parts.append(part)
        self._touch()
        return part

    def snapshot(self) -> "Session":
        """A copy to save from another thread while this one goes on."""
        import copy

        other = copy.copy(self)
        other.meter = copy.deepcopy(self.meter)
        other.parts = [Part(p.kind, [list(n) for n in p.notes], p.name, p.seed) for p in self.parts]
        other.held = {}
        return other

    def midi_bytes(self) -> bytes:
        """Phrases and answers on separate tracks (one per instrument within each)."""
        import mido

        from .midi import conductor_track, midifile_bytes, song_to_tracks

        everything, crop = self.song(SAVE_RESOLUTION)
        ticks_per_step = TICKS // SAVE_RESOLUTION
        mid = mido.MidiFile(type=1, ticks_per_beat=TICKS)
        mid.tracks.append(conductor_track(everything, ticks_per_step))
        channels = [c for c in range(16) if c != 9]
        for kind, name in (("phrase", PHRASE_TRACK), ("answer", ANSWER_TRACK)):
            song, _ = self.song(SAVE_RESOLUTION, [p for p in self.parts if p.kind == kind], crop=False)
            if not len(song.notes):
                continue
            song = crop_song(song, crop)
            song.names = {int(prog): name for prog in set(song.notes[:, 4].tolist())}
            mid.tracks.extend(song_to_tracks(song, ticks_per_step, channels=channels))
            used = len(set(song.notes[:, 4].tolist()) - {DRUMS})  # answers go on the channels after
            channels = channels[used % len(channels):] + channels[:used % len(channels)]
        return midifile_bytes(mid)

    def save(self, folder, stem: str = "session", wav: bool = True, synth: str = "auto", soundfont=None) -> list[str]:
        """Write STEM.mid (and STEM.wav, rendered from the same notes) into `folder`."""
        from .fileio import atomic_write_bytes

        if self.note_count() == 0:
            raise ValueError("nothing to save yet")
        version = self.version
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        midi_path = folder / f"{stem}.mid"
        atomic_write_bytes(midi_path, self.midi_bytes())
        paths = [str(midi_path)]
        if wav:
            paths.append(render_file_wav(midi_path, folder / f"{stem}.wav", synth, soundfont))
        self.saved_version = version
        return paths


def render_file_wav(midi_path, wav_path, synth: str = "auto", soundfont=None) -> str:
    """The WAV of a saved MIDI file, exactly as `melodylstm render` would make it."""
    from .midi import read_midi
    from .playback import Timeline, render_wav
    from .synth import make_synth

    timeline = Timeline()
    timeline.add_song(read_midi(midi_path, SAVE_RESOLUTION))
    render_wav(timeline, make_synth(synth, soundfont), wav_path)
    return str(wav_path)


def render_in_child(midi_path, synth: str = "auto", soundfont=None) -> str:
    """`melodylstm render` in a child process at low priority: the WAV is exactly what that command
    makes, and rendering never takes the GIL (or much CPU) from the live stream."""
    import subprocess

    wav_path = os.path.splitext(str(midi_path))[0] + ".wav"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "melodylstm", "-q", "render", str(midi_path), "-o", wav_path, "--synth", synth]
    if soundfont:
        command += ["--soundfont", str(soundfont)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise RuntimeError(f"the WAV was not written ({lines[-1] if lines else f'exit status {result.returncode}'})")
    return wav_path


# ---------------------------------------------------------------- answers in a worker thread

class Cancelled(Exception):
    pass


def sample_answer(generator, primer: Song, kwargs: dict, seed: int, send, cancelled) -> None:
    """Sample one answer, reporting through send(kind, payload): ("note", note) as each note is
    complete, then ("done", notes the stream missed), ("failed", reason) or ("cancelled", None).
    `cancelled()` is asked at every note."""
    streamed = set()

    def on_note(note):
        if cancelled():
            raise Cancelled()
        note = tuple(int(x) for x in note)
        streamed.add(note)
        send("note", note)

    try:
        if cancelled():
            raise Cancelled()
        result = generator.continue_(primer, seed=seed, on_note=on_note, **kwargs)[0]
        send("done", [tuple(n) for n in result.notes.notes.tolist() if tuple(n) not in streamed])
    except Cancelled:
        send("cancelled", None)
    except Exception as exc:  # noqa: BLE001 - reported in the status line, never a traceback
        send("failed", one_line(exc))


def _sampler_process(checkpoint, conn, cancelled_up_to) -> None:
    """The sampler process: loads the model once, then answers requests until told to quit."""
    from threadpoolctl import threadpool_limits

    from .generate import Generator

    if hasattr(os, "nice"):
        os.nice(4)  # when both want the CPU, the window (keys, sound, drawing) goes first
    try:
        generator = Generator.load(checkpoint)
    except Exception as exc:  # noqa: BLE001 - the window says it
        conn.send(("failed", None, f"the sampler could not load the model: {one_line(exc)}"))
        return
    with threadpool_limits(1, user_api="blas"):  # one core for sampling, the other for sound and drawing
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            if request[0] == "quit":
                return
            _, job_id, primer, kwargs, seed = request
            sample_answer(generator, primer, kwargs, seed, lambda kind, payload: conn.send((kind, job_id, payload)),
                          lambda: cancelled_up_to.value >= job_id)


class AnswerJob:
    """One answer being sampled. Notes arrive in `incoming` (model steps) as the sampler
    completes them; the window places and plays them."""

    def __init__(self, primer: Song, crop: int, kwargs: dict, seed: int, target: float | None,
                 in_place: bool = False, mode: str = "now"):
        self.primer, self.crop, self.kwargs, self.seed = primer, crop, kwargs, seed
        self.target = target  # seconds the answer should start (None: as soon as it can)
        self.in_place, self.mode = in_place, mode
        self.incoming = collections.deque()
        self.state = "sampling"  # -> done, failed, cancelled
        self.error = None
        self.part = self.placement = self.origin = None  # once committed
        self.requested = None
        self.service = None

    def report(self, kind: str, payload) -> None:
        if self.state == "cancelled":
            return  # whatever the sampler still says
        if kind in ("note", "done"):
            self.incoming.extend([payload] if kind == "note" else payload)
        if kind != "note":
            self.state = kind
            self.error = payload if kind == "failed" else None

    def take(self) -> list:
        out = []
        while self.incoming:
            out.append(self.incoming.popleft())
        return out

    def cancel(self) -> None:
        if self.state == "sampling" and self.service is not None:
            self.service.cancel(self)


class SamplerProcess:
    """Answers are sampled in a child process, so the window's process keeps its GIL: with a
    sampler thread instead, the loop waited 0.1-0.2 s for the GIL while an answer was sampled
    on a busy 2-core machine, and keys and the stream waited with it."""

    def __init__(self, checkpoint):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no fork of a process that runs SDL threads
        self.conn, child = context.Pipe()
        self.cancelled_up_to = context.Value("q", -1, lock=False)
        self.process = context.Process(target=_sampler_process, args=(checkpoint, child, self.cancelled_up_to),
                                       daemon=True, name="melodylstm-sampler")
        ignore = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: Ctrl-C is the window's to handle
        try:
            self.process.start()
        finally:
            signal.signal(signal.SIGINT, ignore)
        child.close()
        self.jobs = {}
        self.ids = itertools.count()
        self.error = None

    def submit(self, job: AnswerJob) -> None:
        job.service, job.id = self, next(self.ids)
        if self.error is not None or not self.process.is_alive():
            job.report("failed", self.error or "the sampler process has stopped")
            return
        self.jobs[job.id] = job
        self.conn.send(("answer", job.id, job.primer, job.kwargs, job.seed))

    def cancel(self, job: AnswerJob) -> None:
        self.cancelled_up_to.value = max(self.cancelled_up_to.value, job.id)
        self.jobs.pop(job.id, None)
        job.state = "cancelled"

    def poll(self) -> None:
        """Hand arrived notes to their jobs (called by the window's loop; never blocks)."""
        try:
            while self.conn.poll():
                kind, job_id, payload = self.conn.recv()
                if job_id is None:  # the model did not load
                    self.error = payload
                    for job in self.jobs.values():
                        job.report("failed", payload)
                    self.jobs.clear()
                    continue
                job = self.jobs.get(job_id)
                if job is not None:
                    job.report(kind, payload)
                    if kind != "note":
                        del self.jobs[job_id]
        except (EOFError, OSError):
            self.error = "the sampler process has stopped"
            for job in self.jobs.values():
                job.report("failed", self.error)
            self.jobs.clear()

    def close(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.process.terminate()


class SamplerThread:
    """The same in a worker thread, when no process can be started (and for the Python API)."""

    lock = threading.Lock()

    def __init__(self, generator):
        self.generator = generator

    def submit(self, job: AnswerJob) -> None:
        job.service = self
        job.cancelled = False

        def run():
            with self.lock:
                sample_answer(self.generator, job.primer, job.kwargs, job.seed, job.report, lambda: job.cancelled)

        threading.Thread(target=run, daemon=True, name="melodylstm-answer").start()

    def cancel(self, job: AnswerJob) -> None:
        job.cancelled = True
        job.state = "cancelled"

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def supported_controls(generator) -> set:
    """The keyword arguments Generator.continue_ takes (controls such as style arrive with newer
    checkpoints); everything when it takes **kwargs."""
    params = inspect.signature(generator.continue_).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return {"*"}
    return set(params)


def available_styles(generator) -> list:
    for owner in (generator, getattr(generator, "checkpoint", None), getattr(generator, "tok", None)):
        styles = getattr(owner, "styles", None)
        if styles:
            return list(styles)
    return []


# ---------------------------------------------------------------- sound

KEY_BUFFER = 512  # mixer buffer: a key sounds at the next one (11.6 ms)
KEY_CHANNELS = 24
KEY_SECONDS = 3.0  # length of a pre-rendered key note (a held key sounds at most this long)
KEY_RELEASE_MS = 150
VELOCITIES = [32, 48, 64, 80, 96, 112, 127]
CLICK_BAR, CLICK_BEAT = 76, 77  # General MIDI hi and low wood block


class KeySounds:
    """Pre-rendered notes: pressing a key starts a ready sound on a free mixer channel. Rendered
    by their own synth, in a background thread ahead of use (the current octaves and velocity)."""

    def __init__(self, pygame, make, channels):
        self.pygame, self.make, self.channels = pygame, make, channels
        self.synth = self.synth_now = None  # the worker's, the main thread's
        self.cache_lock = threading.Lock()
        self.cache = collections.OrderedDict()  # (program, pitch, velocity) -> int16 bytes
        self.sounds = {}  # the same keys -> pygame Sound (made in the main thread)
        self.playing = {}  # pitch -> channel
        self.next_channel = 0
        self.wishes, self.wish_lock, self.worker = [], threading.Lock(), None

    def _render(self, key, own: bool = False) -> bytes:
        """Render a key's note. The worker uses its synth; a key pressed before its note was ready
        renders it at once with the main thread's own (`own`), never waiting for the worker."""
        from .playback import to_int16
        from .synth import SAMPLE_RATE

        slot = "synth_now" if own else "synth"
        if getattr(self, slot) is None:
            setattr(self, slot, self.make())
        synth = getattr(self, slot)
        program, pitch, velocity = key
        synth.all_off()
        synth.program(0, program)
        synth.note_on(0, pitch, velocity)
        audio = synth.render(int(KEY_SECONDS * SAMPLE_RATE))
        synth.note_off(0, pitch)
        synth.render(SAMPLE_RATE // 5)  # let it go quiet before the next note
        fade = int(0.1 * SAMPLE_RATE)  # no click where the sample ends
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
        data = to_int16(audio)
        with self.cache_lock:
            self.cache[key] = data
            while len(self.cache) > 120:
                old, _ = self.cache.popitem(last=False)
                self.sounds.pop(old, None)
        return data

    def prepare(self, pitches, velocity: int, program: int = 0) -> None:
        """Render these ahead, in order, in one background thread (a newer wish replaces an older)."""
        keys = [(program, p, velocity) for p in pitches if 0 <= p <= 127]
        with self.wish_lock:
            self.wishes = keys
            if self.worker is None or not self.worker.is_alive():
                self.worker = threading.Thread(target=self._prepare, daemon=True, name="melodylstm-keys")
                self.worker.start()

    def _prepare(self) -> None:
        while True:
            with self.wish_lock:
                if not self.wishes:
                    self.worker = None
                    return
                key = self.wishes.pop(0)
            if key not in self.cache:
                self._render(key)

    def on(self, pitch: int, velocity: int, program: int = 0) -> None:
        key = (program, pitch, velocity)
        sound = self.sounds.get(key)
        if sound is None:
            data = self.cache.get(key) or self._render(key, own=True)
            sound = self.sounds[key] = self.pygame.mixer.Sound(buffer=data)
        self.off(pitch)
        channel = self.channels[self.next_channel]
        self.next_channel = (self.next_channel + 1) % len(self.channels)
        channel.play(sound)
        self.playing[pitch] = channel

    def off(self, pitch: int) -> None:
        channel = self.playing.pop(pitch, None)
        if channel is not None:
            channel.fadeout(KEY_RELEASE_MS)


class Audio:
    """The studio's sound: one continuous stream, whose clock is the session's clock."""

    def __init__(self, synth: str = "auto", soundfont=None):
        from .playback import STREAM_CHANNELS, BlockRenderer, PygameOutput, Timeline
        from .synth import make_synth

        self.output = PygameOutput(buffer=KEY_BUFFER)  # raises PlaybackError without a device
        pygame = self.pygame = self.output.pygame
        pygame.mixer.set_num_channels(STREAM_CHANNELS + KEY_CHANNELS)
        self.synth = make_synth(synth, soundfont)
        self.name = self.synth.name
        self.timeline = Timeline()
        self.renderer = BlockRenderer(self.timeline, self.synth)
        self.keys = KeySounds(pygame, lambda: make_synth(self.name, soundfont),
                              [pygame.mixer.Channel(STREAM_CHANNELS + i) for i in range(KEY_CHANNELS)])
        self.scheduled = []  # heap of (start, n, end, pitch, velocity, program, tag)
        self.counter = itertools.count()
        self.pushed = []  # (end, channel, pitch, tag) of notes handed to the renderer
        self.anchor = None  # (stream seconds, monotonic seconds) of the block playing now
        self.metronome = True
        self.clicked_until = 0.0
        self.meter = None

    # the clock
    def now(self) -> float:
        """Stream seconds being heard now: the start of the block playing, plus the time since."""
        from .playback import QUEUED_BLOCK
        from .synth import SAMPLE_RATE

        if self.anchor is None:
            return 0.0
        start, wall = self.anchor
        return start + min(QUEUED_BLOCK / SAMPLE_RATE, time.monotonic() - wall)

    def horizon(self) -> float:
        """The earliest time a new note can still be placed exactly (the stream renders ahead)."""
        return self.renderer.now

    # what plays
    def schedule(self, notes, tag) -> None:
        for start, end, pitch, velocity, program in notes:
            heapq.heappush(self.scheduled, (start, next(self.counter), end, pitch, velocity, program, tag))

    def cancel(self, tag) -> None:
        """Stop a part: unplayed notes are dropped, sounding ones released now."""
        self.scheduled = [s for s in self.scheduled if s[6] is not tag]
        heapq.heapify(self.scheduled)
        now = self.renderer.now
        with self.timeline.lock:
            for end, channel, pitch, note_tag in self.pushed:
                if note_tag is tag and end > now:
                    self.timeline._push(now, "off", channel, pitch, 0)
        self.pushed = [p for p in self.pushed if p[3] is not tag]

    def busy_until(self) -> float:
        return max([s[2] for s in self.scheduled] + [p[0] for p in self.pushed] + [0.0])

    def feed(self) -> None:
        """Keep two blocks queued on the stream channel."""
        from .playback import QUEUED_BLOCK
        from .synth import SAMPLE_RATE

        if self.output.feed(self):  # the block before the one just queued is playing from about now
            self.anchor = (self.renderer.now - 2 * QUEUED_BLOCK / SAMPLE_RATE, time.monotonic())

    def render(self, frames: int) -> np.ndarray:
        """One block, after handing the renderer the notes and clicks due in it."""
        from .synth import SAMPLE_RATE

        block_end = self.renderer.now + frames / SAMPLE_RATE
        self._hand_over(block_end)
        self._clicks(block_end)
        return self.renderer.render(frames)

    def _hand_over(self, until: float) -> None:
        while self.scheduled and self.scheduled[0][0] < until:
            start, _, end, pitch, velocity, program, tag = heapq.heappop(self.scheduled)
            self.timeline.add_note(start, end, pitch, velocity, program, shown=False)
            self.pushed.append((end, self.timeline.channel_for(program), pitch, tag))
        now = self.renderer.now
        self.pushed = [p for p in self.pushed if p[0] > now]

    def _clicks(self, until: float) -> None:
        start = max(self.clicked_until, self.renderer.now)
        if self.metronome and self.meter is not None:
            for when, bar in self.meter.beats(start, until):
                self.timeline.add_note(when, when + 0.05, CLICK_BAR if bar else CLICK_BEAT, 100 if bar else 75,
                                       DRUMS, shown=False)
        self.clicked_until = max(self.clicked_until, until)

    def key_on(self, pitch, velocity, program=0):
        self.keys.on(pitch, velocity, program)

    def key_off(self, pitch):
        self.keys.off(pitch)

    def close(self):
        self.synth.all_off()
        self.pygame.mixer.stop()
        self.output.close()


class NullAudio:
    """No audio device: the session goes on silently, on the wall clock."""

    name = "none"

    def __init__(self):
        self.t0 = time.monotonic()
        self.metronome = False
        self.meter = None
        self.keys = None

    def now(self):
        return time.monotonic() - self.t0

    horizon = now

    def schedule(self, notes, tag):
        pass

    def cancel(self, tag):
        pass

    def busy_until(self):
        return 0.0

    def feed(self):
        pass

    def key_on(self, pitch, velocity, program=0):
        pass

    def key_off(self, pitch):
        pass

    def close(self):
        pass


# ---------------------------------------------------------------- the window

WHITE_KEYS = "a s d f g h j k l ; '".split()  # C D E F G A B C D E F: a DAW's "musical typing"
WHITE_OFFSETS = [0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 17]
BLACK_KEYS = "w e t y u o p".split()
BLACK_OFFSETS = [1, 3, 6, 8, 10, 13, 15]
METRES = [(4, 4), (3, 4), (2, 4), (6, 8), (5, 4), (7, 8)]
NOTE_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
KEY_CHOICES = [None, "auto"] + NOTE_NAMES + [f"{n}:minor" for n in NOTE_NAMES]
HELP = [
    ("A S D F G H J K L ; '", "white keys, C to F;  W E  T Y U  O P: black keys"),
    ("Z / X", "octave down / up"),
    ("C / V", "velocity down / up"),
    ("Enter", "answer now (else the model answers after a bar of silence)"),
    ("B", "another answer: re-sample the last one with a new seed"),
    ("Backspace", "undo the last answer or phrase"),
    ("Up / Down", "temperature up / down"),
    ("[ / ]", "answer length: fewer / more bars"),
    ("- / =", "tempo down / up"),
    ("N", "metre: 4/4 3/4 2/4 6/8 5/4 7/8"),
    ("M", "metronome on / off"),
    (", / .", "key: previous / next (off, auto, C ... B, minor keys)"),
    ("/", "style: next (models that have styles)"),
    ("Left / Right, wheel", "scroll;  Home: the start;  End: follow the playhead"),
    ("Ctrl+S or F2", "save session.mid and session.wav into the session folder"),
    ("drop a MIDI file", "load it as a phrase; the model continues it"),
    ("Esc", "stop the answer / close this help"),
    ("F1 or Tab", "this help"),
    ("Ctrl+Q or close", "quit (unsaved work is autosaved)"),
]
STATUS_H = 46
FPS = 30
WAIT_MS = 8  # longest sleep between looks at the stream, the sampler and the MIDI port
SPECULATE = 0.5  # start sampling this long before a pause ends (dropped if you play on)
COMMIT_LEAD = 0.25  # hand an answer to the stream this long before it is due (> its render-ahead)
MARGIN_S = 0.01  # an as-soon-as-possible answer starts this far past the stream's render-ahead
TEXT, DIM, ERROR, PANEL = (215, 215, 215), (140, 145, 155), (255, 110, 100), (16, 18, 22)


def _musical_keys(pygame) -> tuple[dict, dict]:
    """Scancodes (physical positions, so any keyboard layout plays alike) and, for events that
    carry none, key codes -> semitones above the octave's C."""
    by_name = dict(zip(WHITE_KEYS, WHITE_OFFSETS)) | dict(zip(BLACK_KEYS, BLACK_OFFSETS))
    scan_names = {";": "SEMICOLON", "'": "APOSTROPHE"}
    scancodes = {getattr(pygame, "KSCAN_" + scan_names.get(k, k.upper())): v for k, v in by_name.items()}
    keycodes = {pygame.key.key_code(k): v for k, v in by_name.items()}
    return scancodes, keycodes


class Studio:
    """The window and its event loop around a Session, an Audio and a Generator."""

    on_frame = None  # tests and benchmarks: called with the app after every frame drawn

    def __init__(self, session: Session, generator, audio, folder, bars=2, temperature=CONTINUE_TEMPERATURE,
                 key=None, style=None, pause=None, seed=None, inport=None, size=(1100, 560), synth="auto",
                 soundfont=None, metronome=True, gen_options=None, log=None, sampler=None):
        self.session, self.gen, self.audio, self.folder = session, generator, audio, Path(folder)
        self.sampler = sampler or SamplerThread(generator)
        self.bars, self.temperature, self.key, self.style = bars, temperature, key, style
        self.pause, self.inport, self.size = pause, inport, size
        self.synth_kind = audio.name if audio.name != "none" else synth
        self.soundfont, self.gen_options = soundfont, dict(gen_options or {})
        self.seeds = itertools.count(seed) if seed is not None else None  # --seed 5: answers use 5, 6, 7 ...
        self.audio.metronome, self.audio.meter = metronome, session.meter
        self.log = log if log is not None else (lambda m: print(f"studio: {m}", file=sys.stderr, flush=True))
        self.octave, self.velocity = 60, 96  # the A key plays C4
        self.down = {}  # key -> pitch sounding for it
        self.job = None
        self.tried = None  # the phrase last answered (or tried): a pause answers it once
        self.answers = 0
        self.saving = None  # a save thread
        self.message, self.message_error = "", False
        self.messages = []  # everything said, in order
        self.quit_reason = None
        self.help = False
        self.t0, self.follow = 0.0, True
        self.cache_key, self.cache, self.cache_parts = None, None, []
        self.status_rects = []
        self.texts = {}
        self.next_frame = 0.0
        self.events = []  # (monotonic, stream s, what, detail): what the window did, for benchmarks
        self.screen = None
        self.view = None  # what the last frame showed: now, t0, t1, low, high, size of the roll

    # ------------------------------------------------------------ messages

    def say(self, text: str, error: bool = False, quiet: bool = False) -> None:
        """Status line (and stderr unless quiet): the only way anything reaches the user."""
        self.message, self.message_error = text, error
        self.messages.append(text)
        if not quiet:
            self.log(text)

    def safe(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the session goes on, whatever one action did
            self.say(f"error: {one_line(exc)}", error=True)
            return None

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Until the window closes, Ctrl+Q, Ctrl-C or SIGTERM; unsaved work is autosaved. Always 0."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # the sampler thread must not hold the GIL for 5 ms while a key waits
        try:
            self._open_window()
            while self.quit_reason is None:
                self.step()
        except KeyboardInterrupt:
            self.quit_reason = "Ctrl-C"
        except Exception as exc:  # noqa: BLE001 - never a traceback; the work is still saved below
            self.say(f"error: {one_line(exc)}", error=True)
            self.quit_reason = "error"
        finally:
            sys.setswitchinterval(switch)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        return 0

    def _on_signal(self, signum, frame):
        self.quit_reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"

    def _open_window(self):
        from .pianoroll import _pygame, warn_if_offscreen

        pygame = self.pygame = _pygame()
        warn_if_offscreen()
        pygame.display.init()
        self.screen = pygame.display.set_mode(self.size, pygame.RESIZABLE)
        pygame.display.set_caption("melodylstm studio")
        pygame.key.stop_text_input()  # raw keys: no input method between a key and its note
        self.scancodes, self.keycodes = _musical_keys(pygame)
        self._prepare_keys()

    def step(self) -> None:
        for event in self.pygame.event.get():
            self.safe(self.handle, event)
        self.work()
        # Sleep until an event comes (a key is handled at once) or it is time to look at the
        # stream, the sampler and the MIDI port again.
        event = self.pygame.event.wait(WAIT_MS)
        if event.type != self.pygame.NOEVENT:
            self.safe(self.handle, event)

    def work(self) -> None:
        if self.inport is not None:
            self.safe(self.poll_midi)
        self.safe(self.sampler.poll)
        self.safe(self.update_answer)
        self.safe(self.audio.feed)
        now = time.monotonic()
        if now >= self.next_frame:
            self.next_frame = now + 1.0 / FPS
            self.safe(self.draw)
            if self.on_frame is not None:
                self.on_frame()

    def _close(self):
        if self.job is not None:
            self.job.cancel()
        self.safe(self.sampler.close)
        if self.saving is not None:
            self.saving.join(timeout=60)
        for pitch in list(self.down.values()):
            self.audio.key_off(pitch)
        now = self.audio.now()
        for pitch in list(self.session.held):
            self.session.note_off(pitch, now)
        self.safe(self.audio.close)
        try:
            self.autosave()
        except Exception as exc:  # noqa: BLE001 - said, never a traceback
            self.log(f"cannot autosave: {one_line(exc)}")
        try:
            self.pygame.display.quit()
        except Exception:  # noqa: BLE001 - closing anyway
            pass

    def autosave(self) -> str | None:
        """Unsaved work goes to autosave.mid in the session folder (a temp folder if that fails)."""
        if not self.session.dirty:
            self.log(f"{self.quit_reason or 'closed'}: nothing unsaved")
            return None
        import tempfile

        from .fileio import atomic_write_bytes

        data = self.session.midi_bytes()
        for folder in (self.folder, None):
            try:
                folder = folder or Path(tempfile.mkdtemp(prefix="melodylstm-autosave-"))
                path = folder / "autosave.mid"
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            except OSError as exc:
                self.log(f"cannot autosave into {folder} ({exc.strerror or exc})")
                continue
            self.session.saved_version = self.session.version
            self.log(f"{self.quit_reason or 'closed'}: autosaved {self.session.note_count()} notes to {path}")
            return str(path)
        return None

    # ------------------------------------------------------------ events

    def handle(self, event) -> None:
        pygame = self.pygame
        if event.type == pygame.QUIT:
            self.quit_reason = "window closed"
        elif event.type == pygame.KEYDOWN:
            self.key_down(event)
        elif event.type == pygame.KEYUP:
            self.key_up(event)
        elif event.type == pygame.DROPFILE:
            self.load(event.file)
        elif event.type == pygame.MOUSEBUTTONDOWN and event.button in (1, 3):
            self.click(event.pos, 1 if event.button == 1 else -1)
        elif event.type == pygame.MOUSEWHEEL:
            self.wheel(event)
        elif event.type in (pygame.VIDEORESIZE, pygame.WINDOWRESIZED):
            self.cache_key = None
        elif event.type == pygame.WINDOWFOCUSLOST:
            for code in list(self.down):  # no key-up will come for keys held now
                self.release(code)

    def musical_offset(self, event):
        if event.mod & (self.pygame.KMOD_CTRL | self.pygame.KMOD_ALT | self.pygame.KMOD_META):
            return None
        scancode = getattr(event, "scancode", 0)
        if scancode:
            return self.scancodes.get(scancode)
        return self.keycodes.get(event.key)

    def key_down(self, event) -> None:
        offset = self.musical_offset(event)
        code = getattr(event, "scancode", 0) or event.key
        if offset is not None:
            if code not in self.down:
                self.press(code, self.octave + offset, self.velocity)
            return
        self.command(event)

    def key_up(self, event) -> None:
        self.release(getattr(event, "scancode", 0) or event.key)

    def press(self, code, pitch: int, velocity: int) -> None:
        pitch = max(0, min(127, pitch))
        at = self.audio.now()  # the moment of the press, whatever starting the sound costs
        self.audio.key_on(pitch, self.sound_velocity(velocity))
        self.session.note_on(pitch, velocity, at)
        self.down[code] = pitch
        self.follow = True
        self.events.append((time.monotonic(), self.session.last_note_on, "key", pitch))

    def release(self, code) -> None:
        pitch = self.down.pop(code, None)
        if pitch is not None:
            self.audio.key_off(pitch)
            self.session.note_off(pitch, self.audio.now())

    @staticmethod
    def sound_velocity(velocity: int) -> int:
        return min(VELOCITIES, key=lambda v: abs(v - velocity))  # pre-rendered layers

    def poll_midi(self) -> None:
        for msg in self.inport.iter_pending():
            if msg.type == "note_on" and msg.velocity > 0:
                self.release(("midi", msg.note))
                self.press(("midi", msg.note), msg.note, msg.velocity)
            elif msg.type in ("note_off", "note_on"):
                self.release(("midi", msg.note))

    def command(self, event) -> None:
        pygame, key = self.pygame, event.key
        ctrl = event.mod & (pygame.KMOD_CTRL | pygame.KMOD_META)
        if ctrl and key == pygame.K_s or key == pygame.K_F2:
            self.save()
        elif ctrl and key == pygame.K_q:
            self.quit_reason = "Ctrl+Q"
        elif ctrl and key == pygame.K_z or key == pygame.K_BACKSPACE:
            self.undo()
        elif key in (pygame.K_RETURN, pygame.K_KP_ENTER):
            self.answer_now()
        elif key == pygame.K_b:
            self.answer_again()
        elif key in (pygame.K_F1, pygame.K_TAB):
            self.help = not self.help
        elif key == pygame.K_ESCAPE:
            self.escape()
        elif key in (pygame.K_LEFT, pygame.K_RIGHT):
            self.scroll((1 if key == pygame.K_RIGHT else -1) * self.session.meter.bar_seconds())
        elif key in (pygame.K_PAGEUP, pygame.K_PAGEDOWN):
            self.scroll((1 if key == pygame.K_PAGEDOWN else -1) * self.span() * 0.8)
        elif key == pygame.K_HOME:
            self.follow, self.t0 = False, 0.0
        elif key == pygame.K_END:
            self.follow = True
        else:
            for name, (up, down) in self.control_keys().items():
                if key in (up, down):
                    self.adjust(name, 1 if key == up else -1)

    def control_keys(self) -> dict:
        p = self.pygame
        return {"octave": (p.K_x, p.K_z), "velocity": (p.K_v, p.K_c), "temperature": (p.K_UP, p.K_DOWN),
                "bars": (p.K_RIGHTBRACKET, p.K_LEFTBRACKET), "tempo": (p.K_EQUALS, p.K_MINUS),
                "metre": (p.K_n, None), "metronome": (p.K_m, None), "key": (p.K_PERIOD, p.K_COMMA),
                "style": (p.K_SLASH, None)}

    # ------------------------------------------------------------ controls

    def adjust(self, name: str, direction: int) -> None:
        """One control one notch up (+1) or down (-1): keys and clicks on the status line."""
        session = self.session
        if name == "octave":
            self.octave = max(12, min(108, self.octave + 12 * direction))
            self._prepare_keys()
        elif name == "velocity":
            i = VELOCITIES.index(self.sound_velocity(self.velocity))
            self.velocity = VELOCITIES[max(0, min(len(VELOCITIES) - 1, i + direction))]
            self._prepare_keys()
        elif name == "temperature":
            self.temperature = round(max(0.0, min(2.0, self.temperature + 0.1 * direction)), 2)
        elif name == "bars":
            self.bars = max(1, min(32, self.bars + direction))
        elif name == "tempo":
            self.set_meter(bpm=max(30.0, min(300.0, round(session.meter.bpm) + 5 * direction)))
        elif name == "metre":
            i = METRES.index(session.meter.metre) if session.meter.metre in METRES else -1
            self.set_meter(metre=METRES[(i + direction) % len(METRES)])
        elif name == "metronome":
            self.audio.metronome = not self.audio.metronome
        elif name == "key":
            i = KEY_CHOICES.index(self.key) if self.key in KEY_CHOICES else 0
            self.key = KEY_CHOICES[(i + direction) % len(KEY_CHOICES)]
        elif name == "style":
            styles = available_styles(self.gen)
            if not styles:
                self.say("this model has no style control", error=True)
                return
            choices = [None] + styles
            i = choices.index(self.style) if self.style in choices else 0
            self.style = choices[(i + direction) % len(choices)]
        self.say(f"{name}: {self.control_text(name)}", quiet=True)
        self.cache_key = None

    def set_meter(self, bpm=None, metre=None) -> None:
        meter = self.session.meter
        if self.session.note_count() == 0 and not self.session.held:
            meter.restart(bpm or meter.bpm, metre or meter.metre)  # nothing recorded: the grid may move
        else:
            meter.change(self.audio.now(), bpm, metre)  # from the next bar line on

    def control_text(self, name: str) -> str:
        meter = self.session.meter
        texts = {
            "synth": f"synth: {self.audio.name}", "tempo": f"{meter.bpm:.0f} bpm",
            "metre": "%d/%d" % meter.metre, "metronome": "click on" if self.audio.metronome else "click off",
            "temperature": f"temp {self.temperature:.1f}", "bars": f"{self.bars} bar{'s' if self.bars != 1 else ''}",
            "key": f"key {self.key or 'off'}", "style": f"style {self.style or '-'}",
            "octave": f"A = {NOTE_NAMES[self.octave % 12]}{self.octave // 12 - 1}", "velocity": f"vel {self.velocity}",
        }
        return texts[name]

    def span(self) -> float:
        return max(8.0, 4 * self.session.meter.bar_seconds())

    def scroll(self, seconds: float) -> None:
        self.follow = False
        self.t0 = max(0.0, self.t0 + seconds)

    def wheel(self, event) -> None:
        for rect, name in self.status_rects:
            if rect.collidepoint(self.pygame.mouse.get_pos()):
                self.adjust(name, 1 if event.y > 0 else -1)
                return
        self.scroll(-(event.y or -event.x) * self.session.meter.bar_seconds())

    def click(self, pos, direction: int) -> None:
        for rect, name in self.status_rects:
            if rect.collidepoint(pos):
                if name not in ("synth", "folder"):
                    self.adjust(name, direction)
                return

    def _prepare_keys(self) -> None:
        """The keys' notes rendered ahead: the keyboard's range first, then an octave either side."""
        if getattr(self.audio, "keys", None) is not None:
            pitches = list(range(self.octave, self.octave + 18)) + list(range(self.octave + 18, self.octave + 30)) + \
                list(range(self.octave - 1, self.octave - 13, -1))
            self.audio.keys.prepare(pitches, self.sound_velocity(self.velocity))

    # ------------------------------------------------------------ answers

    def controls(self) -> dict:
        """continue_'s keyword arguments; controls the model lacks are left out, with a message."""
        kwargs = {"bars": self.bars, "temperature": self.temperature, **self.gen_options}
        supported = supported_controls(self.gen)
        for name, value in (("key", self.key), ("style", self.style)):
            if value is None:
                continue
            if "*" in supported or name in supported:
                kwargs[name] = value
            else:
                self.say(f"this model has no {name} control: answering without {name} {value}", error=True)
        return kwargs

    def start_job(self, parts=None, target=None, in_place=False, mode="now") -> bool:
        try:
            primer, crop = self.session.primer(parts)
        except ValueError as exc:
            self.say(one_line(exc), error=True)
            return False
        if self.job is not None:
            self.job.cancel()
        self.tried = self._phrase_marker()
        seed = next(self.seeds) if self.seeds is not None else secrets.randbelow(2**31)
        self.job = AnswerJob(primer, crop, self.controls(), seed, target, in_place, mode)
        self.job.requested = self.audio.now()
        self.sampler.submit(self.job)
        self.events.append((time.monotonic(), self.job.requested, "answer requested", target))
        if mode != "pause":
            self.say("answering...", quiet=True)
        return True

    def _phrase_marker(self):
        last = self.session.parts[-1] if self.session.parts else None
        return (id(last), len(last.notes)) if last else None

    def pause_seconds(self) -> float:
        return self.pause if self.pause is not None else self.session.meter.bar_seconds()

    def update_answer(self) -> None:
        now, session, job = self.audio.now(), self.session, self.job
        if job is None:
            if session.unanswered() and not session.held and self._phrase_marker() != self.tried:
                target = session.pause_end(self.pause_seconds())
                if now >= target - SPECULATE:
                    self.start_job(target=target, mode="pause")
            return
        played_since = session.last_note_on is not None and session.last_note_on > job.requested
        if job.part is None:
            if job.mode == "pause" and played_since:  # you went on playing: not the end of a phrase
                job.cancel()
                self.job, self.tried = None, None
            elif job.state == "failed":
                self.fail(job)
            elif job.state in ("done", "cancelled") and not job.incoming:
                if job.state == "done":
                    self.say("the model answered with silence (try another temperature or seed)", error=True)
                self.job = None
            elif job.incoming and (job.target is None or now >= job.target - COMMIT_LEAD):
                self.commit(job)
            return
        if job.mode == "pause" and played_since and now < job.origin:
            self.retract(job)  # you played before the answer began: it gives way
            return
        self.receive(job)
        if job.state != "sampling" and not job.incoming:
            if job.state == "failed":
                self.fail(job)
                return
            self.job = None
            self.say(f"answer {self.answers}: {len(job.part.notes)} notes, seed {job.seed}", quiet=True)

    def commit(self, job) -> None:
        """The answer's place is fixed: on its target (the beat that ends the pause), in place
        after a loaded file, or as soon as the stream allows."""
        session = self.session
        earliest = self.audio.horizon() + MARGIN_S
        first = job.incoming[0]
        placement = None
        if job.in_place:
            placement = Placement(session.meter, session.resolution, job.crop)
            if placement.place(first)[0] < earliest:
                placement = None
        if placement is None:
            origin = job.target if job.target is not None and job.target >= earliest else \
                session.meter.next_step(earliest, session.resolution)
            placement = Placement(session.meter, session.resolution, job.crop, origin)
        job.placement = placement
        job.origin = placement.place(first)[0]
        job.part = session.begin_answer(job.seed)
        self.answers += 1
        self.events.append((time.monotonic(), job.origin, "answer placed", job.target))
        self.say(f"answer {self.answers} (seed {job.seed})", quiet=True)
        self.receive(job)

    def receive(self, job) -> None:
        notes = job.placement.place_all(job.take())
        if notes:
            job.part.notes.extend(notes)
            self.audio.schedule(notes, job.part)
            self.session._touch()

    def retract(self, job) -> None:
        job.cancel()
        self.audio.cancel(job.part)
        if job.part in self.session.parts:
            self.session.parts.remove(job.part)
            self.session._touch()
        self.answers -= 1
        self.job, self.tried = None, None

    def fail(self, job) -> None:
        self.say(f"the model could not answer: {job.error}", error=True)
        if job.part is not None and not job.part.notes and job.part in self.session.parts:
            self.session.parts.remove(job.part)
        self.job = None

    def answer_now(self) -> None:
        if self.job is not None and self.job.part is not None and self.job.state == "sampling":
            self.say("the model is still answering", error=True)
            return
        self.start_job(target=None, mode="now")

    def answer_again(self) -> None:
        """Re-sample the last answer with a new seed, in its stead."""
        parts = self.session.parts
        last = parts[-1] if parts else None
        if last is None or last.kind != "answer":
            self.say("no answer to replace: the last part is yours (Backspace undoes it)", error=True)
            return
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.audio.cancel(last)
        parts.remove(last)
        self.session._touch()
        self.answers -= 1
        self.start_job(target=None, mode="again")

    def undo(self) -> None:
        job = self.job
        if job is not None and job.part is None:
            job.cancel()
            self.job = None
            self.say("answer cancelled", quiet=True)
            return
        for code in list(self.down):
            self.release(code)
        part = self.session.undo()
        if part is None:
            self.say("nothing to undo", error=True)
            return
        if job is not None and job.part is part:
            job.cancel()
            self.job = None
        self.audio.cancel(part)
        if part.kind == "answer":
            self.answers -= 1
        self.tried = self._phrase_marker()  # an undone answer does not come straight back
        self.say(f"undid the last {part.kind} ({len(part.notes)} notes)", quiet=True)

    def escape(self) -> None:
        if self.help:
            self.help = False
            return
        for part in self.session.parts:
            if part.kind == "answer":
                self.audio.cancel(part)
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.say("stopped", quiet=True)

    # ------------------------------------------------------------ files

    def load(self, path) -> None:
        name = os.path.basename(str(path))
        at = max(self.audio.horizon() + 0.05, self.session.end())
        try:
            part = self.session.load(path, at)
        except (MidiError, OSError, ValueError) as exc:
            self.say(f"cannot load {name}: {one_line(exc)}", error=True)
            return
        if self.job is not None:
            self.job.cancel()
            self.job = None
        self.audio.schedule(part.notes, part)
        self.follow = True
        self.say(f"loaded {name} ({len(part.notes)} notes); the model continues it")
        self.start_job(target=None, in_place=True, mode="file")

    def save(self) -> None:
        if self.saving is not None and self.saving.is_alive():
            self.say("still saving", error=True)
            return
        if self.session.note_count() == 0:
            self.say("nothing to save yet", error=True)
            return
        snapshot = self.session.snapshot()
        self.say(f"saving into {self.folder} ...", quiet=True)

        def work():
            try:
                midi = snapshot.save(self.folder, wav=False)[0]
                self.session.saved_version = snapshot.version
                wav = render_in_child(midi, self.synth_kind, self.soundfont)
                self.say(f"saved {os.path.basename(midi)} and {os.path.basename(wav)} in {self.folder}")
            except Exception as exc:  # noqa: BLE001 - a message; the session goes on
                self.say(f"cannot save into {self.folder}: {one_line(exc)}", error=True)

        self.saving = threading.Thread(target=work, daemon=True, name="melodylstm-save")
        self.saving.start()

    # ------------------------------------------------------------ drawing

    def bounds(self, held) -> tuple[int, int]:
        """Pitches shown: every note, the keys held and the keyboard's range, at least two octaves."""
        pitches = [n[2] for n in held] + [self.octave, self.octave + 17] + list(self.session.pitch_range())
        low, high = min(pitches) - 2, max(pitches) + 2
        if high - low < 24:
            low -= (24 - (high - low)) // 2
            high = low + 24
        return max(0, low), min(127, high)

    def draw(self) -> None:
        from . import pianoroll as roll

        pygame = self.pygame
        screen = self.screen = pygame.display.get_surface()  # a new one after a resize
        width, height = screen.get_size()
        now = self.audio.now()
        span = self.span()
        if self.follow and not self.t0 <= now <= self.t0 + 0.85 * span:
            self.t0 = max(0.0, now - 0.15 * span)  # page on: the background is redrawn only then
        t0, t1 = self.t0, self.t0 + span
        area = screen.subsurface((0, 0, width, max(60, height - STATUS_H)))
        held = self.session.held_notes(now)
        low, high = self.bounds(held)
        self.draw_roll(area, low, high, t0, t1)
        area.blit(self.cache, (0, 0))
        self.view = {"now": now, "t0": t0, "t1": t1, "low": low, "high": high, "size": area.get_size()}
        roll.draw_notes(area, held, low, high, t0, t1, colour_of=lambda n: roll.PRIMER)
        roll.draw_playhead(area, low, high, t0, t1, now)
        self.draw_status(screen, width, height)
        if self.help:
            self.draw_help(screen)
        pygame.display.flip()

    def draw_roll(self, area, low, high, t0, t1) -> None:
        """The piano roll without held keys and playhead, kept between frames: redrawn when the
        view pages on or something is removed; an answer's new notes are drawn onto it."""
        from . import pianoroll as roll

        meter, parts = self.session.meter, self.session.parts
        key = (t0, t1, area.get_size(), low, high, tuple(meter.tempos), tuple(meter.signatures))
        kept = key == self.cache_key and all(any(p is q for q in parts) and len(p.notes) >= n
                                             for p, n in self.cache_parts)
        if kept:
            done = {id(p): n for p, n in self.cache_parts}
            new = [(*n, p.kind == "answer") for p in parts for n in p.notes[done.get(id(p), 0):]]
        else:
            self.cache = self.pygame.Surface(area.get_size(), 0, area)  # the screen's format: a plain copy
            roll.draw_background(self.cache, low, high, t0, t1, meter.grid())
            new = self.session.roll_notes()
        if new:
            roll.draw_notes(self.cache, new, low, high, t0, t1, colour_of=self.colour_of)
        self.cache_key, self.cache_parts = key, [(p, len(p.notes)) for p in parts]

    @staticmethod
    def colour_of(note):
        from .pianoroll import GENERATED, PRIMER

        return GENERATED if note[5] else PRIMER

    def state_text(self) -> str:
        job = self.job
        if job is not None:
            return "answering..." if job.part is None or job.state == "sampling" else "answer playing"
        if self.session.held:
            return "playing"
        return "answer playing" if self.audio.busy_until() > self.audio.now() else "listening"

    def text(self, text: str, colour, size: int = 18):
        """Rendered text, cached: the status line is drawn 30 times a second but rarely changes."""
        from .pianoroll import font

        key = (text, colour, size)
        if key not in self.texts:
            if len(self.texts) > 200:
                self.texts.clear()
            self.texts[key] = font(size).render(text, True, colour)
        return self.texts[key]

    def draw_status(self, screen, width, height) -> None:
        self.pygame.draw.rect(screen, PANEL, (0, height - STATUS_H, width, STATUS_H))
        x, y = 8, height - STATUS_H + 5
        self.status_rects = []
        for name in ("synth", "tempo", "metre", "metronome", "temperature", "bars", "key", "style", "octave", "velocity"):
            rect = screen.blit(self.text(self.control_text(name), TEXT), (x, y))
            self.status_rects.append((rect, name))
            x = rect.right + 16
        line = self.text(f"{self.state_text()}  |  {self.session.note_count()} notes  |  {self.folder}  |  F1: keys", DIM)
        screen.blit(line, (8, y + 20))
        if self.message:
            text = self.text(self.message, ERROR if self.message_error else TEXT)
            screen.blit(text, (max(8 + line.get_width() + 24, width - text.get_width() - 8), y + 20))

    def draw_help(self, screen) -> None:
        from .pianoroll import font

        pygame = self.pygame
        width = max(font(18).size(k)[0] for k, _ in HELP) + max(font(18).size(d)[0] for _, d in HELP) + 60
        height = 24 * len(HELP) + 40
        panel = pygame.Surface((width, height), pygame.SRCALPHA)
        panel.fill((*PANEL, 235))
        column = max(font(18).size(k)[0] for k, _ in HELP) + 30
        panel.blit(font(20).render("melodylstm studio: keys", True, TEXT), (15, 10))
        for i, (keys, what) in enumerate(HELP):
            panel.blit(font(18).render(keys, True, (240, 190, 120)), (15, 36 + 24 * i))
            panel.blit(font(18).render(what, True, TEXT), (column, 36 + 24 * i))
        screen.blit(panel, ((screen.get_width() - width) // 2, max(0, (screen.get_height() - STATUS_H - height) // 2)))


# ---------------------------------------------------------------- entry point

def default_folder() -> Path:
    return Path.cwd() / time.strftime("studio-%Y%m%d-%H%M%S")


def open_audio(synth: str, soundfont, messages: list):
    from .playback import PlaybackError
    from .synth import SynthError

    try:
        return Audio(synth, soundfont)
    except (PlaybackError, SynthError) as exc:
        messages.append(f"{one_line(exc).split(';')[0]}: no sound, the session goes on (save still writes a WAV)")
        return NullAudio()


def run_studio(midi_file=None, checkpoint=None, out=None, in_port=None, bars=2, temperature=CONTINUE_TEMPERATURE,
               tempo=120.0, metre=(4, 4), key=None, style=None, pause=None, metronome=True, seed=None,
               synth="auto", soundfont=None, size=(1100, 560), gen_options=None) -> int:
    """The `studio` command: load the model, open sound and window, run until closed."""
    from .generate import Generator
    from .playback import PlaybackError, open_midi_input

    generator = Generator.load(checkpoint)  # here for its grid and controls; it samples in a process
    session = Session(tempo, metre, generator.tok.config.resolution)
    messages = []
    try:
        sampler = SamplerProcess(checkpoint)
    except (OSError, RuntimeError) as exc:
        messages.append(f"answers are sampled in a thread ({one_line(exc)})")
        sampler = SamplerThread(generator)
    audio = open_audio(synth, soundfont, messages)
    inport = None
    if in_port:
        try:
            inport = open_midi_input(in_port)
        except PlaybackError as exc:
            messages.append(f"{one_line(exc)}: the computer keyboard still plays")
    app = Studio(session, generator, audio, out or default_folder(), bars=bars, temperature=temperature, key=key,
                 style=style, pause=pause, seed=seed, inport=inport, size=size, synth=synth, soundfont=soundfont,
                 metronome=metronome, gen_options=gen_options, sampler=sampler)
    for message in messages:
        app.say(message, error=True)
    if style is not None and not available_styles(generator) and "style" not in supported_controls(generator):
        app.say(f"this model has no style control: answering without style {style}", error=True)
    app.log(f"synth: {audio.name}; session folder {app.folder}; F1 lists the keys")
    if midi_file:
        app.load(midi_file)
    try:
        return app.run()
    finally:
        if inport is not None:
            inport.close()
