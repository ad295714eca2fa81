"""The studio's session model: the piece (phrases and answers as notes on the session's clock),
its tempo map and metre, every edit the window makes, the primer the model continues, and saving.

No window and no sound:
    s = Session(); s.add_note(60, 0.0, 0.5); s.answer(Generator.load()); s.save("take1")
"""
from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import CONTINUE_TEMPERATURE
from ..midi import DRUMS, MidiError, Song, TempoMap, crop_song, crop_to_bar

TICKS = 480  # the session clock's ticks per quarter note: exact for every metre and the model's grid
SAVE_RESOLUTION = 96  # steps per quarter in saved files: keeps the feel of live playing (5 ms at 120 bpm)
ANSWER_TRACK = "melodylstm answer"  # `melodylstm show` draws tracks named melodylstm... as the model's
PHRASE_TRACK = "phrases"


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
    None continues in place, from the bar line that ends the primer (after a loaded file)."""

    def __init__(self, tempo_map: TempoMap, resolution: int, crop: int, origin: float | None = None):
        self.tempo_map, self.size = tempo_map, TICKS / resolution
        self.origin, self.base = origin, crop * TICKS / resolution if origin is None else None

    def place(self, note) -> list:
        return self.place_all([note])[0]

    def place_all(self, notes) -> list:
        """[start s, end s, pitch, velocity, program] for model notes (onset, duration, pitch, velocity, program)."""
        notes = np.asarray(notes, dtype=np.int64).reshape(-1, 5)
        if not len(notes):
            return []
        if self.base is None:  # the first note fixes where step 0 lies
            self.base = self.tempo_map.step_at(self.origin) - int(notes[0, 0]) * self.size
        start = self.base + notes[:, 0] * self.size
        times = np.atleast_1d(self.tempo_map.seconds(np.concatenate([start, start + notes[:, 1] * self.size])))
        n = len(notes)
        return [[float(a), float(b), *row] for a, b, row in zip(times[:n], times[n:], notes[:, 2:].tolist())]


class Session:
    """The call-and-response piece: no window, no sound; every edit the studio makes is a method
    here (the window reads `parts` but never changes them)."""

    def __init__(self, bpm: float = 120.0, metre=(4, 4), resolution: int = 12):
        self.tempo_map = TempoMap.steady(bpm, metre, TICKS)  # on the session clock's ticks
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
        grid = self.tempo_map.on_grid(resolution)
        rows = np.array([n for part in parts for n in part.notes], dtype=np.float64).reshape(-1, 5)
        onsets = np.maximum(0, np.round(self.tempo_map.step_at(rows[:, 0]) * resolution / TICKS))
        stops = np.round(self.tempo_map.step_at(rows[:, 1]) * resolution / TICKS)
        notes = np.column_stack([onsets, np.maximum(1, stops - onsets), rows[:, 2:]]).astype(np.int64)
        song = Song(notes, resolution, grid.tempos, grid.signatures)
        if not crop or not len(song.notes):
            return song, 0
        return crop_to_bar(song)

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
        return self.tempo_map.next_beat(silence + pause)

    def answer(self, generator, bars: int = 2, temperature: float = CONTINUE_TEMPERATURE, seed=None,
               at: float | None = None, pause: float | None = None, **controls) -> Part:
        """Sample an answer to the whole session and add it. It starts `at` seconds (default: on
        the first beat after a bar of silence, as the window does)."""
        primer, crop = self.primer()
        origin = at if at is not None else self.pause_end(self.tempo_map.bar_seconds() if pause is None else pause)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        result = generator.continue_(primer, bars=bars, temperature=temperature, seed=seed, **controls)[0]
        return self.add_answer(result.notes.notes, Placement(self.tempo_map, self.resolution, crop, origin), seed)

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

    def extend_answer(self, part: Part, notes) -> None:
        """Placed notes of an answer still arriving: [start s, end s, pitch, velocity, program] each."""
        if notes:
            part.notes.extend(notes)
            self._touch()

    def remove(self, part: Part) -> bool:
        """Take a part out (a retracted, failed or replaced answer); False if it was not here."""
        index = next((i for i, p in enumerate(self.parts) if p is part), None)  # `is`: equal parts may differ
        if index is None:
            return False
        del self.parts[index]
        if part.notes:  # an empty part changed nothing: no unsaved work appears
            self._touch()
        return True

    def last_part(self) -> Part | None:
        return self.parts[-1] if self.parts else None

    def retime(self, at: float, bpm: float | None = None, metre=None) -> None:
        """A new tempo or metre: from `at`'s next bar line on, or from time 0 while nothing is
        recorded (then the grid may move)."""
        if self.note_count() == 0 and not self.held:
            self.tempo_map.restart(bpm or self.tempo_map.bpm, metre or self.tempo_map.metre)
        else:
            self.tempo_map.change(at, bpm, metre)

    def mark_saved(self, version: int) -> None:
        """The piece as it was at `version` is on disk (a save from another thread, the autosave)."""
        self.saved_version = version

    # ------------------------------------------------------------ files

    def load(self, source, at: float, resolution: int = SAVE_RESOLUTION, name: str | None = None) -> Part:
        """A MIDI file (path, bytes, or a Song from load_phrase) as a new phrase whose first bar
        starts at `at` seconds; the session takes the file's tempo and metre from there."""
        song = source if isinstance(source, Song) else load_phrase(source, resolution)
        if name is None:
            name = "file" if isinstance(source, (bytes, bytearray, Song)) else os.path.basename(os.fspath(source))
        bpm, metre = 60e6 / song.tempos[0][1], song.time_signatures[0][1:]
        if self.note_count() == 0:
            self.tempo_map.restart(bpm, metre)
        else:
            self.tempo_map.change(at, bpm, metre)
        start = self.tempo_map.seconds(self.tempo_map.next_bar(at))
        onsets = song.seconds(song.notes[:, 0])
        ends = song.seconds(song.notes[:, 0] + song.notes[:, 1])
        notes = [[start + float(s), start + float(e), p, v, prog]
                 for (_, _, p, v, prog), s, e in zip(song.notes.tolist(), np.atleast_1d(onsets), np.atleast_1d(ends))]
        for part in self.parts:
            part.open = False
        part = Part("phrase", notes, name=name)
        self.parts.append(part)
        self._touch()
        return part

    def snapshot(self) -> "Session":
        """A copy to save from another thread while this one goes on."""
        import copy

        other = copy.copy(self)
        other.tempo_map = copy.deepcopy(self.tempo_map)
        other.parts = [Part(p.kind, [list(n) for n in p.notes], p.name, p.seed) for p in self.parts]
        other.held = {}
        return other

    def midi_bytes(self) -> bytes:
        """Phrases and answers on separate tracks (one per instrument within each)."""
        import mido

        from ..midi import conductor_track, midifile_bytes, song_to_tracks

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
        from ..fileio import atomic_write_bytes

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


def load_phrase(source, resolution: int = SAVE_RESOLUTION) -> Song:
    """A MIDI file (path or bytes) read for the session: MidiError if it cannot be read or has
    no notes; cropped to the bar of its first note."""
    from ..midi import read_midi, read_midi_bytes

    song = read_midi_bytes(source, resolution) if isinstance(source, (bytes, bytearray)) else read_midi(source, resolution)
    if not len(song.notes):
        raise MidiError("the file has no notes")
    return crop_to_bar(song)[0]


def render_file_wav(midi_path, wav_path, synth: str = "auto", soundfont=None) -> str:
    """The WAV of a saved MIDI file, exactly as `melodylstm render` would make it."""
    from ..midi import read_midi
    from ..playback import Timeline, render_wav
    from ..synth import make_synth

    timeline = Timeline()
    timeline.add_song(read_midi(midi_path, SAVE_RESOLUTION))
    render_wav(timeline, make_synth(synth, soundfont), wav_path)
    return str(wav_path)


def render_in_child(midi_path, synth: str = "auto", soundfont=None) -> str:
    """`melodylstm render` in a child process at low priority: the WAV is exactly what that command
    makes, and rendering never takes the GIL (or much CPU) from the live stream."""
    import subprocess

    wav_path = os.path.splitext(str(midi_path))[0] + ".wav"
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


