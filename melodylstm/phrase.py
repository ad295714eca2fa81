"""The phrase `continue` answers: what it reads from the primer's last bars (their register, note
lengths, rests and pace, its voices, whether its line is slow enough to read in shorter values)."""
from __future__ import annotations

import numpy as np

from .config import PRIMER_REST_BARS
from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, Song, compress_time

SLOW_PACE = 0.5  # notes per quarter below which a phrase is read in shorter note values


def note_value_factor(song: Song, most: int = 4) -> int:
    """How many times shorter (1, 2 or 4) a slow phrase's note values are written for the model:
    halved while it starts fewer than SLOW_PACE notes per quarter, its median note is a half note
    or longer (not quarter notes between long rests) and its steps allow. The same line in half
    notes or in quarters is the same music; the model has heard far more of the second (hymns,
    chorales and airs are written in quarters as often as in halves)."""
    notes = song.notes[song.notes[:, PROGRAM] != DRUMS]
    if len(notes) == 0:
        return 1
    pace = len(np.unique(notes[:, ONSET])) * song.resolution / max(song.end - int(notes[:, ONSET].min()), 1)
    median = float(np.median(notes[:, DURATION]))
    factor = 1
    while factor < most and pace * factor < SLOW_PACE and median / factor >= 2 * song.resolution:
        try:
            compress_time(song, factor * 2)
        except ValueError:
            break
        factor *= 2
    return factor


def primer_voices(song: Song) -> int:
    """The most pitched notes the primer starts at one moment (1 for a melody, 4 for a chorale):
    the answer's voice limit, so its texture follows the primer's whatever the style."""
    notes = song.notes[song.notes[:, PROGRAM] != DRUMS]
    if len(notes) == 0:
        return 0
    return int(np.unique(notes[:, ONSET], return_counts=True)[1].max())


RECENT_BARS = 2  # the primer's pace and rests are read from its last bars: where the answer starts


def phrase_end(song: Song) -> int:
    """The step where the phrase ends: the bar line at or after its last note's end. A phrase is
    heard in whole bars, so the breath after its last note (a rest before the bar line) is part of it."""
    grid = song.tempo_map
    return grid.bar_start(grid.bar_at_or_after(song.end))


def recent_span(song: Song, bars: int = RECENT_BARS) -> int:
    """The step where the song's last `bars` bars begin."""
    grid = song.tempo_map
    return grid.bar_start(max(0, grid.bar_at_or_after(song.end) - bars))


def recent_notes(song: Song, bars: int = RECENT_BARS) -> np.ndarray:
    """The notes sounding in the song's last bars (those begun earlier and still ringing included)."""
    return song.notes[song.notes[:, ONSET] + song.notes[:, DURATION] > recent_span(song, bars)]


def recent_onsets_per_beat(song: Song, resolution: int) -> float:
    """Distinct note onsets per beat over the song's last bars."""
    start = recent_span(song)
    onsets = np.unique(song.notes[song.notes[:, ONSET] >= start, ONSET])
    return len(onsets) / max(1.0, (phrase_end(song) - start) / resolution)


def longest_rest(song: Song, bars: int = PRIMER_REST_BARS) -> int:
    """The longest silence (steps) between the notes of the song's last `bars` bars, the one after
    its last note (up to the phrase's end) included: an answer rests no longer than the phrase it
    continues. A phrase that ends on a breath lets its answer breathe too."""
    notes = recent_notes(song, bars)
    if len(notes) == 0:
        return phrase_end(song) - recent_span(song, bars)
    last_end = int((notes[:, ONSET] + notes[:, DURATION]).max())
    return int(max(inner_rest(notes), phrase_end(song) - last_end, 0))


def inner_rest(notes: np.ndarray) -> int:
    """The longest silence (steps) between the first note's start and the last note's end."""
    if len(notes) < 2:
        return 0
    order = np.argsort(notes[:, ONSET], kind="stable")
    onsets, ends = notes[order, ONSET], np.maximum.accumulate(notes[order, ONSET] + notes[order, DURATION])
    return int(max((onsets[1:] - ends[:-1]).max(initial=0), 0))


def register_bias(tok, song: Song, strength: float, width: float, bars: int = RECENT_BARS) -> np.ndarray:
    """Additive logits over the vocabulary: on each PITCH token, `strength` x the log of a kernel
    density of the song's last bars' pitches (Gaussian, `width` semitones), scaled so its peak is 0
    and floored at 1e-3, 0 elsewhere. Pitches the phrase plays around cost nothing; a leap away
    from its register costs more the further it goes."""
    bias = np.zeros(len(tok), dtype=np.float32)
    notes = recent_notes(song, bars)
    notes = notes[notes[:, PROGRAM] != DRUMS]
    if len(notes) == 0:
        return bias
    c = tok.config
    grid = np.arange(c.pitch_low, c.pitch_high + 1, dtype=np.float64)
    density = np.exp(-0.5 * ((grid[:, None] - notes[None, :, PITCH]) / width) ** 2).sum(axis=1)
    bias[tok.pitch0: tok.pitch0 + len(grid)] = strength * np.log(np.maximum(density / density.max(), 1e-3))
    return bias


def note_length_bias(tok, song: Song, strength: float) -> np.ndarray:
    """Additive logits over the vocabulary: on each DURATION token, `strength` x the log share of
    the song's last bars' notes with that length (add-half smoothed), 0 elsewhere. Sampling then
    draws from the model's lengths times the phrase's own, to the power `strength`."""
    notes = recent_notes(song)
    index = np.searchsorted(tok.durations, notes[:, DURATION]).clip(0, len(tok.durations) - 1)
    counts = np.bincount(index, minlength=len(tok.durations)) + 0.5
    bias = np.zeros(len(tok), dtype=np.float32)
    bias[tok.duration0: tok.duration0 + len(tok.durations)] = strength * np.log(counts / counts.sum())
    return bias
