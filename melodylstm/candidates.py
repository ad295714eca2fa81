"""Candidate answers: `continue` samples several answers to a phrase and keeps, for each one asked
for, the candidate that sounds most like the phrase's last bars, in register, pace, note lengths,
rhythm and rests. One sample of four bars wanders by chance (a leap up a fifth that stays there,
a run of long notes in a lively tune); the choice among a few keeps the model's own notes while
dropping the answers that have lost the thread. Magenta's melody RNN does the same with its beam
search on likelihood; ranking on likelihood alone favours the commonest notes, not this phrase's.
"""
from __future__ import annotations

import numpy as np

from .config import CONTINUE_CANDIDATES, PRIMER_REGISTER_BARS
from .metrics.continuations import COPY, histogram_overlap, shared_notes, silent_share
from .metrics.features import inter_onset_histogram, note_length_histogram
from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, Song
from .phrase import phrase_end, recent_notes, recent_span


def traits(notes: np.ndarray, start: int, steps: int, resolution: int) -> dict:
    """What a listener compares between a phrase and its answer, over the span [start, start + steps)."""
    notes = notes[notes[:, PROGRAM] != DRUMS]
    return {"pitch": float(notes[:, PITCH].mean()) if len(notes) else float("nan"),
            "pace": len(np.unique(notes[:, ONSET])) / max(steps / resolution, 1e-9),
            "lengths": note_length_histogram(notes, resolution),
            "onsets": inter_onset_histogram(notes, resolution),
            "silent": silent_share(notes, start, steps)}


def differences(phrase: dict, answer: dict) -> np.ndarray:
    """How far an answer is from the phrase on each trait (0: the same); an empty answer is furthest."""
    if not np.isfinite(answer["pitch"]):
        return np.full(5, np.inf)
    return np.array([abs(answer["pitch"] - phrase["pitch"]),
                     abs(np.log((answer["pace"] + 0.25) / (phrase["pace"] + 0.25))),
                     1.0 - histogram_overlap(answer["lengths"], phrase["lengths"]),
                     1.0 - histogram_overlap(answer["onsets"], phrase["onsets"]),
                     abs(answer["silent"] - phrase["silent"])])


# An answer that replays COPY of its notes from the phrase is a copy, not an answer. Without the
# rule the phrase itself, replayed, was often the one kept: chorale sopranos (8 samples) took up
# the primer's motifs in 0.74 of their patterns (the real continuations: 0.59); with it 0.63


def replayed(answer: np.ndarray, phrase: np.ndarray, start: int, span: int) -> float:
    """Share of the answer's notes that the phrase, played again and again from `start` every
    `span` steps, plays too (same pitch, same place): an answer that plays a 4-bar phrase twice is
    as much a replay as one that plays it once."""
    if len(answer) == 0:
        return 0.0
    return shared_notes(start + (answer[:, ONSET] - start) % max(1, span), answer[:, PITCH], phrase)


def closest(phrase: dict, answers: list[dict], replays=None) -> int:
    """Index of the answer nearest the phrase: the fewest answers nearer than it, summed over the
    traits (ties: the earlier answer). Ranks need no weights between semitones, shares and overlaps
    (the register's rank counted 2 or 4 times: the pitch no more often as close to the real music,
    the rhythm less often; benchmarks/README.md).
    replays: each answer's share of notes replayed from the phrase; an answer replaying COPY or
    more is chosen only when every answer does, and then the one replaying least."""
    table = np.array([np.nan_to_num(differences(phrase, a), nan=np.inf) for a in answers])
    nearer = (table[None, :, :] < table[:, None, :]).sum(axis=1)  # [i, trait]: answers nearer than i
    score = nearer.sum(axis=1).astype(float)
    if replays is not None:
        replays = np.asarray(replays, dtype=float)
        allowed = replays < COPY
        score[~(allowed if allowed.any() else replays <= replays.min())] = np.inf
    return int(score.argmin())


def answer_candidates(candidates, num: int, on_note) -> int:
    """Samples per answer asked for: CONTINUE_CANDIDATES by default, one when each note is heard as
    it is sampled (there is nothing to choose then), and never past the sampler's 1,024 rows."""
    if candidates is None:
        candidates = 1 if on_note is not None else CONTINUE_CANDIDATES
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or not 1 <= candidates <= 64:
        raise ValueError(f"candidates must be a whole number from 1 to 64, not {candidates!r}")
    if not 1 <= num <= 1024:
        raise ValueError("--num must be 1..1024")
    return max(1, min(int(candidates), 1024 // num))


def nearest_the_phrase(primer: Song, answers: list) -> int:
    """Index of the answer (Songs starting at the phrase's end) that sounds most like the primer's
    last PRIMER_REGISTER_BARS bars: the span the answer is heard against."""
    if len(answers) == 1:
        return 0
    res, grid = primer.resolution, primer.tempo_map
    start = recent_span(primer, PRIMER_REGISTER_BARS)
    notes = recent_notes(primer, PRIMER_REGISTER_BARS)
    begin = phrase_end(primer)  # the answers start there; the phrase's closing breath is the phrase's
    phrase = traits(notes, start, begin - start, res)
    last = max((int((a.notes[:, ONSET] + a.notes[:, DURATION]).max()) for a in answers if len(a.notes)),
               default=begin)
    end = grid.bar_start(grid.bar_at_or_after(last))
    heard = [traits(a.notes, begin, max(1, end - begin), res) for a in answers]
    return closest(phrase, heard, [replayed(a.notes, notes, start, begin - start) for a in answers])
