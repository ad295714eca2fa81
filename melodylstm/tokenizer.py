"""Event tokenizer: Song <-> a sequence of integer tokens from a small, fixed vocabulary, the
grammar of such sequences and their BAR/SHIFT clock.

Each note becomes PITCH (or DRUM), VELOCITY, DURATION. Time moves forward with BAR
(to the next bar line: `after_bar`) and SHIFT_k (k grid steps) tokens; a PROGRAM token appears only when
the instrument of the next pitched note differs from the previous one. Sequences are wrapped
in BOS ... EOS, PAD fills batches.

What is lossy is decided in `normalize` (one place, each rule counted); after it,
`decode(encode(song))` gives back exactly the normalized notes.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, VELOCITY, Song, TempoMap

# token types
PAD, BOS, EOS, BAR, SHIFT, PROGRAM_T, PITCH_T, DRUM_T, VELOCITY_T, DURATION_T = range(10)
TYPE_NAMES = ["PAD", "BOS", "EOS", "BAR", "SHIFT", "PROGRAM", "PITCH", "DRUM", "VELOCITY", "DURATION"]
START = len(TYPE_NAMES)  # grammar state before any token: only BOS may come
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenizerConfig:
    resolution: int = 12  # grid steps per quarter note: 16ths (3 steps) and 8th triplets (4 steps)
    pitch_low: int = 21  # piano range by default
    pitch_high: int = 108
    drum_low: int = 27  # General MIDI percussion keys (35-81) plus common extensions
    drum_high: int = 87
    velocity_bins: int = 32
    max_duration_beats: int = 8  # longer notes are cut to this
    max_shift_beats: int = 4  # longer gaps take several SHIFT tokens
    bar_tokens: bool = True
    programs: str = "keep"  # "keep": PROGRAM tokens keep instruments apart; "merge": one pitched part
    drums: str = "keep"  # "keep": drums as DRUM tokens; "drop": drum tracks are removed
    merge_program: int = 0  # instrument of the merged part

    def __post_init__(self):
        checks = [
            (1 <= self.resolution <= 96, "resolution must be 1..96 steps per quarter"),
            (0 <= self.pitch_low <= self.pitch_high <= 127, "pitch range must lie in 0..127"),
            (0 <= self.drum_low <= self.drum_high <= 127, "drum range must lie in 0..127"),
            (2 <= self.velocity_bins <= 127, "velocity_bins must be 2..127"),
            (1 <= self.max_duration_beats <= 64, "max_duration_beats must be 1..64"),
            (1 <= self.max_shift_beats <= 64, "max_shift_beats must be 1..64"),
            (self.programs in ("keep", "merge"), "programs must be 'keep' or 'merge'"),
            (self.drums in ("keep", "drop"), "drums must be 'keep' or 'drop'"),
            (0 <= self.merge_program <= 127, "merge_program must be 0..127"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown tokenizer settings: {', '.join(sorted(unknown))}")
        return cls(**data)


def duration_values(resolution: int, max_beats: int) -> list[int]:
    """Every step up to one beat, then coarser: quarter-beats to 2 beats, half-beats to 4, beats after."""
    values = set(range(1, resolution + 1))
    for start, stop, step in ((1, 2, 4), (2, 4, 2), (4, max_beats, 1)):
        stride = max(1, resolution // step)
        values.update(range(start * resolution, min(stop, max_beats) * resolution + 1, stride))
    return sorted(v for v in values if v <= max_beats * resolution)


def velocity_values(bins: int) -> list[int]:
    return sorted(set(np.round(np.linspace(1, 127, bins)).astype(int).tolist()))


class Tokenizer:
    def __init__(self, config: TokenizerConfig | None = None):
        self.config = c = config or TokenizerConfig()
        self.velocities = velocity_values(c.velocity_bins)
        self.durations = duration_values(c.resolution, c.max_duration_beats)
        self.max_shift = c.max_shift_beats * c.resolution
        self.programs = list(range(128)) if c.programs == "keep" else []
        self.initial_program = 0 if c.programs == "keep" else c.merge_program

        names, types, values = [], [], []

        def add(kind, value, name):
            names.append(name)
            types.append(kind)
            values.append(value)

        for kind in (PAD, BOS, EOS):
            add(kind, 0, TYPE_NAMES[kind])
        if c.bar_tokens:
            add(BAR, 0, "BAR")
        self.shift0 = len(names)
        for k in range(1, self.max_shift + 1):
            add(SHIFT, k, f"SHIFT_{k}")
        self.program0 = len(names)
        for p in self.programs:
            add(PROGRAM_T, p, f"PROGRAM_{p}")
        self.pitch0 = len(names)
        for p in range(c.pitch_low, c.pitch_high + 1):
            add(PITCH_T, p, f"PITCH_{p}")
        self.drum0 = len(names)
        if c.drums == "keep":
            for p in range(c.drum_low, c.drum_high + 1):
                add(DRUM_T, p, f"DRUM_{p}")
        self.velocity0 = len(names)
        for v in self.velocities:
            add(VELOCITY_T, v, f"VELOCITY_{v}")
        self.duration0 = len(names)
        for d in self.durations:
            add(DURATION_T, d, f"DURATION_{d}")

        self.vocab = names
        self.token_type = np.array(types, dtype=np.int8)
        self.token_value = np.array(values, dtype=np.int32)
        self.bar = names.index("BAR") if c.bar_tokens else -1
        self._build_lookups()
        self.follow = self._follow_table()

    # ------------------------------------------------------------ tables

    def _build_lookups(self):
        v = np.array(self.velocities)
        self.velocity_round = v[np.abs(np.arange(128)[:, None] - v[None, :]).argmin(1)]  # nearest bin value
        self.velocity_token = np.zeros(128, dtype=np.int64)
        self.velocity_token[v] = self.velocity0 + np.arange(len(v))
        d = np.array(self.durations)
        span = np.arange(d[-1] + 1)
        self.duration_round = d[np.abs(span[:, None] - d[None, :]).argmin(1)]  # nearest allowed value
        self.duration_floor = np.concatenate([[d[0]], d[np.searchsorted(d, span[1:], side="right") - 1]])
        self.duration_token = np.zeros(d[-1] + 1, dtype=np.int64)
        self.duration_token[d] = self.duration0 + np.arange(len(d))

    def _follow_table(self) -> np.ndarray:
        """follow[t, tok]: may token `tok` come right after a token of type t?"""
        vocab = len(self.vocab)
        kind = self.token_type
        event_start = np.isin(kind, [BAR, SHIFT, PROGRAM_T, PITCH_T, DRUM_T, EOS])
        table = np.zeros((len(TYPE_NAMES) + 1, vocab), dtype=bool)
        table[START] = kind == BOS
        for t in (BOS, BAR, SHIFT, DURATION_T):
            table[t] = event_start
        table[PROGRAM_T] = kind == PITCH_T
        table[PITCH_T] = kind == VELOCITY_T
        table[DRUM_T] = kind == VELOCITY_T
        table[VELOCITY_T] = kind == DURATION_T
        table[EOS] = kind == PAD
        table[PAD] = kind == PAD
        return table

    def __len__(self):
        return len(self.vocab)

    @property
    def pad(self):
        return PAD

    @property
    def bos(self):
        return BOS

    @property
    def eos(self):
        return EOS

    def pitch_token(self, pitch: int) -> int:
        return self.pitch0 + pitch - self.config.pitch_low

    # ------------------------------------------------------------ lossy rules

    def normalize(self, song: Song) -> tuple[Song, dict]:
        """Apply every lossy rule; returns the song the tokens will represent and what was lost."""
        c = self.config
        notes = song.notes.astype(np.int64, copy=True)
        counts = {}
        drums = notes[:, PROGRAM] == DRUMS
        if c.drums == "drop":
            counts["drum_notes_dropped"] = int(drums.sum())
            notes, drums = notes[~drums], drums[~drums]
        if c.programs == "merge":
            notes[~drums, PROGRAM] = c.merge_program
        low = np.where(drums, c.drum_low, c.pitch_low)
        high = np.where(drums, c.drum_high, c.pitch_high)
        in_range = (notes[:, PITCH] >= low) & (notes[:, PITCH] <= high)
        counts["out_of_range"] = int((~in_range).sum())
        notes = notes[in_range]
        notes[:, VELOCITY] = self.velocity_round[np.clip(notes[:, VELOCITY], 0, 127)]
        too_long = notes[:, DURATION] > self.durations[-1]
        counts["duration_capped"] = int(too_long.sum())
        notes[:, DURATION] = self.duration_round[np.minimum(notes[:, DURATION], self.durations[-1])]
        notes, counts["duplicates"], counts["overlaps_truncated"] = self._resolve_overlaps(notes)
        kept = Song(notes, song.resolution, list(song.tempos), list(song.time_signatures), dict(song.names))
        return kept, counts

    def _resolve_overlaps(self, notes):
        """Same pitch on the same instrument cannot sound twice in MIDI: keep one note per onset
        (the loudest, then longest) and cut a note short where the next one starts."""
        if len(notes) < 2:
            return notes, 0, 0
        order = np.lexsort((notes[:, DURATION], notes[:, VELOCITY], notes[:, ONSET], notes[:, PITCH], notes[:, PROGRAM]))
        notes = notes[order]
        same_key = (notes[1:, PROGRAM] == notes[:-1, PROGRAM]) & (notes[1:, PITCH] == notes[:-1, PITCH])
        duplicate = same_key & (notes[1:, ONSET] == notes[:-1, ONSET])
        keep = np.ones(len(notes), dtype=bool)
        keep[:-1][duplicate] = False  # keep the last of equal onsets (loudest, then longest)
        notes = notes[keep]
        if len(notes) < 2:
            return notes, int(duplicate.sum()), 0
        same_key = (notes[1:, PROGRAM] == notes[:-1, PROGRAM]) & (notes[1:, PITCH] == notes[:-1, PITCH])
        gap = notes[1:, ONSET] - notes[:-1, ONSET]
        overlap = same_key & (notes[:-1, ONSET] + notes[:-1, DURATION] > notes[1:, ONSET])
        notes[:-1, DURATION] = np.where(overlap, self.duration_floor[np.clip(gap, 0, len(self.duration_floor) - 1)],
                                        notes[:-1, DURATION])
        return notes, int(duplicate.sum()), int(overlap.sum())

    # ------------------------------------------------------------ encode

    def encode(self, song: Song) -> np.ndarray:
        """Tokens (uint16, BOS ... EOS) for a song; lossy rules applied first."""
        return self.tokenize(song)[0]

    def tokenize(self, song: Song) -> tuple[np.ndarray, Song, dict]:
        kept, counts = self.normalize(song)
        return self.encode_normalized(kept), kept, counts

    def encode_normalized(self, song: Song, end: int | None = None) -> np.ndarray:
        """Tokens of a normalized song. end: move the clock on to this step after the last note
        (a phrase that ends on a rest before its bar line: the model hears the rest); an `end`
        at or before the last onset adds nothing."""
        notes = song.notes
        if len(notes) == 0:
            return np.array([BOS, EOS], dtype=np.uint16)
        c = self.config
        grid = song.tempo_map
        shift0, max_shift, bar_token = self.shift0 - 1, self.max_shift, self.bar
        pitch_base, drum_base = self.pitch0 - c.pitch_low, self.drum0 - c.drum_low
        program_base = self.program0
        vel_tok, dur_tok = self.velocity_token.tolist(), self.duration_token.tolist()
        out = [BOS]
        append = out.append
        time, bar_index = 0, -1
        next_bar = grid.bar_start(0) if c.bar_tokens else 1 << 62
        program = self.initial_program
        rows = notes.tolist()
        if end is not None and end > rows[-1][0]:
            rows.append([end, -1, 0, 0, 0])  # no note: the clock alone moves on to `end`
        for onset, dur, pitch, vel, prog in rows:
            if onset != time or next_bar <= onset:
                while next_bar <= onset:
                    append(bar_token)
                    bar_index += 1
                    time = next_bar
                    next_bar = grid.bar_start(bar_index + 1)
                gap = onset - time
                while gap > max_shift:
                    append(shift0 + max_shift)
                    gap -= max_shift
                if gap:
                    append(shift0 + gap)
                time = onset
            if dur < 0:
                break
            if prog == DRUMS:
                append(drum_base + pitch)
            else:
                if prog != program:
                    append(program_base + prog)
                    program = prog
                append(pitch_base + pitch)
            append(vel_tok[vel])
            append(dur_tok[dur])
        append(EOS)
        return np.array(out, dtype=np.uint16)

    # ------------------------------------------------------------ decode

    def decoder(self, like: Song | None = None) -> "StreamingDecoder":
        return StreamingDecoder(self, like)

    def decode(self, tokens, like: Song | None = None) -> Song:
        """Tokens -> Song. Lenient: tokens that break the grammar are skipped, never raised on.
        `like` supplies tempo, time signatures and track names (the tokens carry none)."""
        dec = self.decoder(like)
        for token in np.asarray(tokens).tolist():
            dec.push(token)
        return dec.song()

    def is_legal(self, tokens, like: Song | None = None) -> bool:
        dec = self.decoder(like)
        for token in np.asarray(tokens).tolist():
            if not dec.allowed()[token]:
                return False
            dec.push(token)
        return True

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "config": asdict(self.config), "vocab": self.vocab}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> "Tokenizer":
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported tokenizer format {data.get('format')!r}")
        tok = cls(TokenizerConfig.from_dict(data["config"]))
        if "vocab" in data and data["vocab"] != tok.vocab:
            raise ValueError("vocabulary does not match its tokenizer config")
        return tok

    @classmethod
    def from_json(cls, text: str) -> "Tokenizer":
        return cls.from_dict(json.loads(text))

    def describe(self, tokens) -> list[str]:
        return [self.vocab[t] if 0 <= t < len(self.vocab) else f"<{t}>" for t in np.asarray(tokens).tolist()]


# ---------------------------------------------------------------- the BAR/SHIFT clock

def after_bar(grid: TempoMap, bar_index: int, time: int) -> tuple[int, int]:
    """(bar index, time) after a BAR token: the next bar line, or the first bar line at or after
    `time` when shifts ran past bar lines. The one rule the decoder, the sampler and the controls
    (`token_times`) follow; a SHIFT just adds its value."""
    bar_index += 1
    if grid.bar_start(bar_index) < time:
        bar_index = grid.bar_at_or_after(time)
    return bar_index, grid.bar_start(bar_index)


def token_times(tokens, tok, grid: TempoMap) -> np.ndarray:
    """Time (in steps) right after each token, following the decoder's rules: SHIFT moves on by
    its value, BAR goes to the next bar line (to the first bar line at or after the time when
    shifts ran past bar lines).

    Between two BARs the time is the bar's start plus the shifts so far (a cumulative sum). The
    n-th BAR starts bar n unless shifts ran past its line; that is checked for all BARs at once,
    and only then are the BARs followed one by one."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0:
        return np.zeros(0, dtype=np.int64)
    kinds = tok.token_type[tokens]
    shift = np.where(kinds == SHIFT, tok.token_value[tokens], 0).astype(np.int64)
    moved = np.cumsum(shift)
    bars = np.flatnonzero(kinds == BAR)
    if len(bars) == 0:
        return moved
    segment = np.cumsum(kinds == BAR) - 1  # which BAR each token follows (-1: none yet)
    index = np.arange(len(bars))
    bar_starts = grid.bar_starts(index)
    # the time just before each BAR, if every BAR so far went to the next bar line
    before = np.where(index > 0, bar_starts[index - 1] + moved[bars - 1] - moved[bars[index - 1]], 0)
    before[0] = moved[bars[0]]  # shifts before the first BAR (a BAR adds no shift)
    if (bar_starts < before).any():  # shifts ran past a bar line: follow the BARs in order
        bar_index, time, previous = -1, 0, 0
        for i, j in enumerate(bars.tolist()):
            bar_index, time = after_bar(grid, bar_index, time + int(moved[j] - previous))
            bar_starts[i], previous = time, int(moved[j])
    base = bar_starts[segment] - moved[bars[segment]]
    return np.where(segment >= 0, base + moved, moved)


class StreamingDecoder:
    """Takes tokens one at a time; `push` returns each note the moment its DURATION arrives.

    Also the grammar: `allowed()` says which tokens may come next so the sequence decodes.
    """

    def __init__(self, tokenizer: Tokenizer, like: Song | None = None):
        self.tok = tokenizer
        res = tokenizer.config.resolution
        self.like = like if like is not None else Song(np.zeros((0, 5)), res)
        self.grid = self.like.tempo_map
        self.time = 0
        self.bar_index = -1
        self.program = tokenizer.initial_program
        self.last_type = START
        self.pending = None  # [pitch, program, velocity or None]
        self.finished = False
        self.notes = []
        self.bars_seen = 0

    @property
    def next_bar(self) -> int:
        return self.grid.bar_start(self.bar_index + 1)

    def fork(self) -> "StreamingDecoder":
        """An independent copy of the decoding state (time, bar, instrument, notes so far) that
        shares the tokenizer and the song it reads like (one per sampled row: a deepcopy copied
        both for every row)."""
        other = copy.copy(self)
        other.notes = list(self.notes)  # notes are tuples: the list is all that changes
        other.pending = None if self.pending is None else list(self.pending)
        return other

    def push(self, token: int):
        tok = self.tok
        if self.finished or not 0 <= token < len(tok.vocab):
            return None
        kind, value = int(tok.token_type[token]), int(tok.token_value[token])
        note = None
        if kind in (BAR, SHIFT, PROGRAM_T, PITCH_T, DRUM_T, EOS, BOS, PAD):
            self.pending = None  # an unfinished note is dropped, never half-emitted
        if kind == BAR:
            self.bar_index, self.time = after_bar(self.grid, self.bar_index, self.time)
            self.bars_seen += 1
        elif kind == SHIFT:
            self.time += value
        elif kind == PROGRAM_T:
            self.program = value
        elif kind == PITCH_T:
            self.pending = [value, self.program, None]
        elif kind == DRUM_T:
            self.pending = [value, DRUMS, None]
        elif kind == VELOCITY_T:
            if self.pending is not None and self.pending[2] is None:
                self.pending[2] = value
        elif kind == DURATION_T:
            if self.pending is not None and self.pending[2] is not None:
                pitch, program, velocity = self.pending
                note = (self.time, value, pitch, velocity, program)
                self.notes.append(note)
            self.pending = None
        elif kind == EOS:
            self.finished = True
        self.last_type = kind
        return note

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of tokens that may legally come next."""
        mask = self.tok.follow[self.last_type].copy()
        if self.tok.config.bar_tokens:  # time reaches a bar line only through BAR
            room = self.next_bar - self.time
            shifts = slice(self.tok.shift0, self.tok.shift0 + self.tok.max_shift)
            mask[shifts] &= np.arange(1, self.tok.max_shift + 1) < room
        return mask

    def song(self) -> Song:
        like = self.like
        return Song(np.array(self.notes, dtype=np.int64).reshape(-1, 5), self.tok.config.resolution,
                    list(like.tempos), list(like.time_signatures), dict(like.names))
