"""MIDI files <-> `Song`, the grid-quantized note list every other module works on, and its
`TempoMap`, the one place that turns steps into seconds and finds bar lines and beats.

Reading uses symusic (a C++ parser, ~100x faster than pretty_midi); writing uses mido,
which gives full control over tracks, channels and event order. `append_tracks` adds new
tracks to a file's own bytes, so a continued input is kept byte for byte.
"""
from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .fileio import atomic_write_bytes

DRUMS = 128  # program number used for General MIDI percussion (channel 10)
ONSET, DURATION, PITCH, VELOCITY, PROGRAM = range(5)  # columns of Song.notes
DEFAULT_TEMPO = 500_000  # microseconds per quarter note (120 bpm), the MIDI default
MAX_FILE_BYTES = 32 * 2**20  # bigger files are skipped: no real single piece needs more
MAX_NOTES = 500_000  # bound on the work spent on one file
MAX_BEATS = 100_000  # ~14 hours at 120 bpm; beyond this a file is corrupt, not music


class MidiError(ValueError):
    """A MIDI file that cannot be used; the message is a one-line reason for the user."""


@dataclass
class Song:
    """Notes on a grid of `resolution` steps per quarter note, plus tempo and metre.

    notes: int32 array (N, 5) of onset, duration, pitch, velocity, program
    (program 128 = drums), sorted by onset, program, pitch.
    """

    notes: np.ndarray
    resolution: int
    tempos: list = field(default_factory=lambda: [(0, DEFAULT_TEMPO)])  # (step, us per quarter)
    time_signatures: list = field(default_factory=lambda: [(0, 4, 4)])  # (step, num, den)
    names: dict = field(default_factory=dict)  # program -> track name

    def __post_init__(self):
        self.notes = sort_notes(np.asarray(self.notes, dtype=np.int32).reshape(-1, 5))

    @property
    def end(self) -> int:
        """Step at which the last note ends (0 for an empty song)."""
        if len(self.notes) == 0:
            return 0
        return int((self.notes[:, ONSET] + self.notes[:, DURATION]).max())

    @property
    def tempo_map(self) -> "TempoMap":
        return TempoMap(self.tempos, self.time_signatures, self.resolution)

    def seconds(self, steps=None):
        """Seconds of steps (scalar or array; default: the song's end), by the tempo map."""
        return self.tempo_map.seconds(self.end if steps is None else steps)


def sort_notes(notes: np.ndarray) -> np.ndarray:
    order = np.lexsort((notes[:, DURATION], notes[:, VELOCITY], notes[:, PITCH],
                        notes[:, PROGRAM], notes[:, ONSET]))
    return notes[order]


def bar_length(numerator: int, denominator: int, resolution: int) -> int:
    return max(1, round(numerator * resolution * 4 / denominator))


class TempoMap:
    """The tempo map and metre of a piece on a grid of `resolution` steps per quarter note: steps
    <-> seconds, bar lines and beats, the last tempo and metre going on forever. The one place
    that walks a piece's time: songs, the tokenizer's BAR/SHIFT clock, the piano roll, the
    studio's clock and metronome all ask it. A change (the studio's) starts at the next bar line,
    so the bars already played keep their places."""

    def __init__(self, tempos=(), time_signatures=(), resolution: int = 12):
        self.resolution = resolution
        self.tempos = [(int(t), int(us)) for t, us in sorted(tempos)] or [(0, DEFAULT_TEMPO)]  # (step, us per quarter)
        if self.tempos[0][0] > 0:
            self.tempos.insert(0, (0, DEFAULT_TEMPO))
        self.signatures = [(int(t), int(n), int(d)) for t, n, d in sorted(time_signatures)] or [(0, 4, 4)]
        if self.signatures[0][0] > 0:
            self.signatures.insert(0, (0, 4, 4))
        self._index()

    @classmethod
    def steady(cls, bpm: float = 120.0, metre=(4, 4), resolution: int = 12) -> "TempoMap":
        return cls([(0, round(60e6 / bpm))], [(0, int(metre[0]), int(metre[1]))], resolution)

    def _index(self) -> None:
        """Tables for the lookups, rebuilt when the map changes."""
        self._steps = np.array([t for t, _ in self.tempos], dtype=np.float64)
        self._per_step = np.array([us for _, us in self.tempos], dtype=np.float64) / 1e6 / self.resolution
        self._starts = np.concatenate([[0.0], np.cumsum(np.diff(self._steps) * self._per_step[:-1])])
        self._steps_per_second = np.array([1e6 / us * self.resolution for _, us in self.tempos])
        head = []  # explicit bar lines before the last time signature
        for (step, num, den), nxt in zip(self.signatures, [s[0] for s in self.signatures[1:]] + [None]):
            length = bar_length(num, den, self.resolution)
            if nxt is None:
                self.tail_start, self.tail_length = step, length
            else:
                head.extend(range(step, nxt, length))
        self.head = head

    @property
    def bpm(self) -> float:
        """The last tempo, in quarter notes per minute."""
        return 60e6 / self.tempos[-1][1]

    @property
    def metre(self) -> tuple[int, int]:
        return self.signatures[-1][1], self.signatures[-1][2]

    # ------------------------------------------------------------ steps <-> seconds

    def seconds(self, steps):
        """Seconds at a step (fractional allowed), or at an array of steps."""
        steps = np.asarray(steps, dtype=np.float64)
        i = np.clip(np.searchsorted(self._steps, steps, side="right") - 1, 0, len(self._steps) - 1)
        out = self._starts[i] + (steps - self._steps[i]) * self._per_step[i]
        return float(out) if np.ndim(out) == 0 else out

    def step_at(self, seconds):
        """The (fractional) step at a time, or at an array of times."""
        at = np.asarray(seconds, dtype=np.float64)
        i = np.clip(np.searchsorted(self._starts, at, side="right") - 1, 0, len(self._starts) - 1)
        out = self._steps[i] + (at - self._starts[i]) * self._steps_per_second[i]
        return float(out) if np.ndim(out) == 0 else out

    def first_step_at(self, seconds: float) -> int:
        """The first whole step at or after `seconds` (turns --seconds into a length)."""
        lo, hi = 0, 1
        while self.seconds(hi) < seconds:
            hi *= 2
        while lo < hi:
            mid = (lo + hi) // 2
            if self.seconds(mid) < seconds:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------ bars and beats

    def bar_start(self, index: int) -> int:
        """The step bar `index` (from 0) starts on."""
        if index < len(self.head):
            return self.head[index]
        return self.tail_start + (index - len(self.head)) * self.tail_length

    def longest_bar(self) -> int:
        """Steps of the longest bar (the bars after the last metre change repeat the last one)."""
        return int(max(np.diff(list(self.head) + [self.tail_start]).max(initial=0), self.tail_length))

    def bar_starts(self, indices) -> np.ndarray:
        """bar_start of an array of bar indices."""
        bars = np.asarray(indices, dtype=np.int64)
        head = np.asarray(self.head, dtype=np.int64)
        tail = self.tail_start + (bars - len(head)) * self.tail_length
        if len(head) == 0:
            return tail
        return np.where(bars < len(head), head[np.clip(bars, 0, len(head) - 1)], tail)

    def bar_at_or_after(self, step: int) -> int:
        """Index of the first bar line at or after `step`."""
        if self.head and step <= self.head[-1]:
            return bisect.bisect_left(self.head, step)
        return len(self.head) + max(0, -(-(step - self.tail_start) // self.tail_length))

    def bar_of(self, step: int) -> int:
        """Index of the bar that holds `step` (a whole step)."""
        return max(0, self.bar_at_or_after(step + 1) - 1)

    def bars_of(self, steps) -> np.ndarray:
        """bar_of an array of whole steps."""
        steps = np.asarray(steps, dtype=np.int64)
        head = np.asarray(self.head, dtype=np.int64)
        in_head = np.searchsorted(head, steps, side="right") - 1
        tail = len(head) + (steps - self.tail_start) // self.tail_length
        return np.where((steps < self.tail_start) & (len(head) > 0), in_head, np.maximum(tail, 0))

    def beat_length(self, step: int) -> int:
        """Steps per beat (the metre's denominator) at `step`."""
        denominator = [d for s, n, d in self.signatures if s <= step][-1]
        return max(1, round(self.resolution * 4 / denominator))

    def bar_seconds(self) -> float:
        """Seconds of one bar of the last tempo and metre."""
        numerator, denominator = self.metre
        return numerator * 4 / denominator * 60.0 / self.bpm

    def beats(self, t0: float, t1: float, closed: bool = False, limit: int = 2000) -> list[tuple[float, int]]:
        """(seconds, bar number from 1) of every bar line and (seconds, 0) of every other beat from
        `t0` to `t1` (`t1` itself when `closed`): the piano roll's lines, the metronome's clicks."""
        index = self.bar_of(max(0, math.floor(self.step_at(max(0.0, t0))) - 1))
        out = []
        while len(out) < limit:
            start, end = self.bar_start(index), self.bar_start(index + 1)
            for step in range(start, end, self.beat_length(start)):
                when = self.seconds(step)
                if when > t1 or (when == t1 and not closed):
                    return out
                if when >= t0:
                    out.append((when, index + 1 if step == start else 0))
            index += 1
        return out

    def next_bar(self, seconds: float) -> int:
        """The step of the first bar line at or after `seconds`."""
        return self.bar_start(self.bar_at_or_after(math.ceil(self.step_at(seconds) - 1e-6)))

    def next_beat(self, seconds: float) -> float:
        """Seconds of the first beat at or after `seconds`."""
        step = self.step_at(seconds)
        start = self.bar_start(self.bar_of(math.floor(step)))
        beat = self.beat_length(start)
        return self.seconds(start + math.ceil((step - start) / beat - 1e-9) * beat)

    def next_step(self, seconds: float, resolution: int) -> float:
        """Seconds of the first step of a coarser grid (`resolution` per quarter) at or after `seconds`."""
        size = self.resolution / resolution
        return self.seconds(math.ceil(self.step_at(seconds) / size - 1e-9) * size)

    # ------------------------------------------------------------ changes (the studio's)

    def change(self, at_seconds: float, bpm: float | None = None, metre=None) -> None:
        """A new tempo and/or metre from the first bar line at or after `at_seconds` on."""
        step = self.next_bar(at_seconds)
        if bpm is not None:
            self.tempos = [t for t in self.tempos if t[0] < step] + [(step, round(60e6 / bpm))]
        if metre is not None:
            self.signatures = [s for s in self.signatures if s[0] < step] + [(step, int(metre[0]), int(metre[1]))]
        self._index()

    def restart(self, bpm: float, metre) -> None:
        """A new map from time 0 (nothing is recorded yet, so nothing moves)."""
        self.tempos, self.signatures = [(0, round(60e6 / bpm))], [(0, int(metre[0]), int(metre[1]))]
        self._index()

    def on_grid(self, resolution: int) -> "TempoMap":
        """The same map on a grid of `resolution` steps per quarter (step numbers rounded)."""
        def step(at):
            return round(at * resolution / self.resolution)

        return TempoMap([(step(t), us) for t, us in self.tempos], [(step(t), n, d) for t, n, d in self.signatures],
                        resolution)


# ---------------------------------------------------------------- reading

def read_midi_bytes(data: bytes, resolution: int, name: str = "file") -> Song:
    """Parse MIDI bytes into a Song on the grid. Raises MidiError with a one-line reason."""
    import symusic  # imported lazily: `melodylstm --help` must stay fast

    if len(data) > MAX_FILE_BYTES:
        raise MidiError(f"too large ({len(data) // 2**20} MB, limit {MAX_FILE_BYTES // 2**20} MB)")
    if data.startswith(b"RIFF") and data[8:12] == b"RMID":  # RIFF-wrapped MIDI (.rmi)
        start = data.find(b"MThd", 12)
        data = data[start:] if start >= 0 else b""
    if not data.startswith(b"MThd"):
        raise MidiError("not a MIDI file (no MThd header)")
    try:
        score = symusic.Score.from_midi(data)
    except Exception as exc:  # symusic raises RuntimeError/ValueError with terse texts
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MidiError(f"unreadable MIDI ({reason[:120]})") from None
    if score.tpq <= 0:
        raise MidiError("invalid ticks-per-beat (0 or SMPTE timing)")
    return score_to_song(score, resolution)


def read_midi(path: str | os.PathLike, resolution: int) -> Song:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise MidiError("is a directory") from None
    except OSError as exc:
        raise MidiError(f"cannot read ({exc.strerror or exc})") from None
    return read_midi_bytes(data, resolution, name=os.fspath(path))


def _to_steps(ticks: np.ndarray, tpq: int, resolution: int) -> np.ndarray:
    ticks = ticks.astype(np.int64)
    return (ticks * (2 * resolution) + tpq) // (2 * tpq)  # round half up, in integers


def score_to_song(score, resolution: int) -> Song:
    tpq = int(score.tpq)
    parts, names, total = [], {}, 0
    for track in score.tracks:
        arrays = track.notes.numpy()
        n = len(arrays["time"])
        if n == 0:
            continue
        total += n
        if total > MAX_NOTES:
            raise MidiError(f"too many notes (over {MAX_NOTES:,})")
        program = DRUMS if track.is_drum else int(track.program)
        start = _to_steps(arrays["time"], tpq, resolution)
        end = _to_steps(arrays["time"].astype(np.int64) + arrays["duration"], tpq, resolution)
        part = np.empty((n, 5), dtype=np.int64)
        part[:, ONSET] = start
        part[:, DURATION] = np.maximum(end - start, 1)  # zero-length notes last one step
        part[:, PITCH] = arrays["pitch"]
        part[:, VELOCITY] = arrays["velocity"]
        part[:, PROGRAM] = program
        parts.append(part)
        if track.name and program not in names:
            names[program] = clean_name(track.name)
    notes = np.concatenate(parts) if parts else np.zeros((0, 5), dtype=np.int64)
    if len(notes) and (notes[:, ONSET] + notes[:, DURATION]).max() > MAX_BEATS * resolution:
        beats = int((notes[:, ONSET] + notes[:, DURATION]).max() // resolution)
        raise MidiError(f"too long (music spans {beats:,} beats, limit {MAX_BEATS:,})")
    keep = (notes[:, VELOCITY] > 0) & (notes[:, PITCH] >= 0)
    tempos = [(int(_to_steps(np.array([t.time]), tpq, resolution)[0]), int(t.mspq))
              for t in score.tempos if 0 < t.mspq < 2**24]
    sigs = [(int(_to_steps(np.array([s.time]), tpq, resolution)[0]), int(s.numerator), int(s.denominator))
            for s in score.time_signatures if 0 < s.numerator <= 64 and s.denominator in (1, 2, 4, 8, 16, 32, 64)]
    return Song(notes[keep], resolution, _dedupe_map(tempos, (0, DEFAULT_TEMPO)),
                _dedupe_map(sigs, (0, 4, 4)), names)


def read_midi_tracks(path, resolution: int) -> list[tuple[str, Song]]:
    """Each track of a file as its own Song (same tempo map), with the track's name."""
    import symusic

    song = read_midi(path, resolution)  # validates the file with the usual one-line errors
    score = symusic.Score.from_midi(open(path, "rb").read())
    out = []
    for track in score.tracks:
        single = score.copy()
        single.tracks.clear()
        single.tracks.append(track)
        part = score_to_song(single, resolution)
        out.append((clean_name(track.name), Song(part.notes, resolution, song.tempos, song.time_signatures)))
    return out


def clean_name(name) -> str:
    """Track names end up in MIDI meta events, which hold latin-1 text only."""
    text = "".join(ch for ch in str(name)[:64] if ch.isprintable())
    return text.encode("latin-1", "replace").decode("latin-1")


def _dedupe_map(events, default):
    """A clean event map: starts at step 0 (with the MIDI default if the file sets none there),
    one event per step (the last), no event that repeats the value before it."""
    by_step = {ev[0]: ev for ev in sorted(events, key=lambda e: e[0])}
    ordered = sorted(by_step.values())
    if not ordered or ordered[0][0] > 0:
        ordered.insert(0, default)
    out = []
    for ev in ordered:
        if not out or ev[1:] != out[-1][1:]:
            out.append(ev)
    return out


# ---------------------------------------------------------------- writing

def song_to_tracks(song: Song, ticks_per_step: float, name_prefix: str = "", channels=None):
    """One mido track per program, note-offs before note-ons at equal times.
    `channels`: pitched-part channels to use in order (default 0-15 without the drum channel)."""
    import mido

    channels = list(channels) if channels else [ch for ch in range(16) if ch != 9]
    tracks = []
    programs = sorted(set(song.notes[:, PROGRAM].tolist()))
    pitched_index = 0
    for program in programs:
        notes = song.notes[song.notes[:, PROGRAM] == program]
        if program == DRUMS:
            channel = 9
        else:
            channel = channels[pitched_index % len(channels)]
            pitched_index += 1
        events = []  # (tick, order, message); order puts note-offs first
        for onset, dur, pitch, vel, _ in notes.tolist():
            events.append((round(onset * ticks_per_step), 1, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
            events.append((round((onset + dur) * ticks_per_step), 0, mido.Message("note_off", channel=channel, note=pitch, velocity=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        default_name = "Drums" if program == DRUMS else f"Program {program}"
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=clean_name(name_prefix + song.names.get(program, default_name))))
        if program != DRUMS:
            track.append(mido.Message("program_change", channel=channel, program=program))
        tracks.append(_with_delta_times(track, events))
    return tracks


def conductor_track(song: Song, ticks_per_step: int):
    import mido

    events = [(step * ticks_per_step, 0, mido.MetaMessage("set_tempo", tempo=us)) for step, us in song.tempos]
    events += [(step * ticks_per_step, 0, mido.MetaMessage("time_signature", numerator=n, denominator=d))
               for step, n, d in song.time_signatures]
    events.sort(key=lambda e: e[0])
    return _with_delta_times(mido.MidiTrack(), events)


def _with_delta_times(track, events):
    import mido

    now = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def song_to_midifile(song: Song, ticks_per_quarter: int = 480):
    import mido

    ticks_per_step = max(1, ticks_per_quarter // song.resolution)
    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_step * song.resolution)
    mid.tracks.append(conductor_track(song, ticks_per_step))
    mid.tracks.extend(song_to_tracks(song, ticks_per_step))
    return mid


def midifile_bytes(mid) -> bytes:
    import io

    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def write_midi(song: Song, path: str | os.PathLike) -> None:
    """Write atomically: an interrupted write never leaves a half-written file."""
    atomic_write_bytes(path, midifile_bytes(song_to_midifile(song)))


def crop_song(song: Song, start: int) -> Song:
    """The part of a song from step `start` on, moved to begin at 0 (tempo and metre carried over)."""
    notes = song.notes[song.notes[:, ONSET] >= start].copy()
    notes[:, ONSET] -= start

    def rebase(events):
        before = [e for e in events if e[0] <= start]
        out = [(0,) + tuple(before[-1][1:])] if before else []
        return out + [(e[0] - start,) + tuple(e[1:]) for e in events if e[0] > start]

    return Song(notes, song.resolution, rebase(song.tempos) or [(0, DEFAULT_TEMPO)],
                rebase(song.time_signatures) or [(0, 4, 4)], dict(song.names))


def compress_time(song: Song, factor: int) -> Song:
    """The song written in note values `factor` times shorter at a tempo `factor` times faster:
    the same music in seconds and in bars (4/2 becomes 4/4, a half note a quarter). Every step and
    every bar length of the song must divide by `factor` (a 3/8 bar of 18 steps does not by 4)."""
    steps = np.concatenate([song.notes[:, ONSET], song.notes[:, DURATION], [e[0] for e in song.tempos],
                            [e[0] for e in song.time_signatures]]).astype(np.int64)
    bars = [bar_length(n, d, song.resolution) for _, n, d in song.time_signatures]
    if (factor < 1 or (steps % factor).any() or any(bar % factor for bar in bars)
            or any(d * factor > 64 for _, _, d in song.time_signatures)):
        raise ValueError(f"the song cannot be written {factor}x shorter on its grid")
    notes = song.notes.copy()
    notes[:, [ONSET, DURATION]] //= factor
    return Song(notes, song.resolution, [(s // factor, us * factor) for s, us in song.tempos],
                [(s // factor, n, d * factor) for s, n, d in song.time_signatures], dict(song.names))


def stretch_notes(notes: np.ndarray, factor: int) -> np.ndarray:
    """Notes in note values `factor` times longer (compress_time undone)."""
    notes = np.array(notes, copy=True)
    notes[:, [ONSET, DURATION]] *= factor
    return notes


def crop_to_bar(song: Song) -> tuple[Song, int]:
    """The song from the bar line at or before its first note, and that bar line's step."""
    if not len(song.notes):
        return song, 0
    grid = song.tempo_map
    start = grid.bar_start(grid.bar_of(int(song.notes[:, ONSET].min())))
    return crop_song(song, start), start


# ---------------------------------------------------------------- splicing into a file as it is

def midi_chunks(data: bytes):
    """(format, tracks, division, [(chunk id, start, end)]) of a standard MIDI file, or None when its
    chunk structure is broken (then the input is written anew rather than copied)."""
    if len(data) < 14 or data[:4] != b"MThd" or int.from_bytes(data[4:8], "big") < 6:
        return None
    fmt, ntracks, division = (int.from_bytes(data[i:i + 2], "big") for i in (8, 10, 12))
    chunks, pos = [], 8 + int.from_bytes(data[4:8], "big")
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + size > len(data):
            return None
        chunks.append((data[pos:pos + 4], pos + 8, pos + 8 + size))
        pos += 8 + size
    if pos != len(data) or division & 0x8000 or fmt > 1 or sum(c[0] == b"MTrk" for c in chunks) != ntracks:
        return None  # trailing bytes, SMPTE time, format 2 or a miscounted header: rewrite instead
    return fmt, ntracks, division, chunks


def channels_in(data: bytes, chunks) -> set:
    """Channels a file may use: every channel-message status byte in its tracks. Bytes of delta
    times or meta data can look like status bytes too, so this may over-count, never under-count."""
    used = set()
    for kind, start, end in chunks:
        if kind == b"MTrk":
            block = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
            status = block[(block >= 0x80) & (block < 0xF0)]
            used.update((np.unique(status) & 0x0F).tolist())
    return used


def append_tracks(source: bytes, song: Song, name: str) -> bytes:
    """The original file, byte for byte, plus the song as new tracks named `name` on unused
    channels: only the header's track count changes (and format 0 becomes 1), so a long input
    costs nothing to keep. `source` must pass midi_chunks."""
    import mido

    fmt, ntracks, division, chunks = midi_chunks(source)
    used = channels_in(source, chunks)
    free = [ch for ch in range(16) if ch != 9 and ch not in used] or [ch for ch in range(16) if ch != 9]
    named = Song(song.notes, song.resolution, song.tempos, song.time_signatures,
                 {p: name for p in set(song.notes[:, PROGRAM].tolist())})
    extra = mido.MidiFile(type=1, ticks_per_beat=division)
    extra.tracks.extend(song_to_tracks(named, division / song.resolution, channels=free))
    new_chunks = midifile_bytes(extra)[14:]  # the new tracks' MTrk chunks, without their header
    header = source[:8] + (1).to_bytes(2, "big") + (ntracks + len(extra.tracks)).to_bytes(2, "big") + source[12:14]
    return header + source[14:] + new_chunks
