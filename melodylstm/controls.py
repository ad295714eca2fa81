"""Controls: what the model is told at every step besides the tokens, so it can hold a key, a
style, a chord progression, a note density and its place in the bar.

Each control is computed from the notes during ingest (cached with the tokens), moves with the
notes under transposition, and has an "unknown" value: training hides each control at random,
so every control is optional when generating. Per token, a control describes the moment right
after that token (the time at which the next note would start), and is read only from notes
that started before the token's beat or bar, never from the notes the model is predicting: a
likelihood figure may give them, and when generating the user's key, chords and density stand
in for them.

* key      24 keys (12 tonics x major/minor): Krumhansl-Schmuckler on the notes heard so far
           (theory.running_keys; unknown for the first 8 notes)
* chord    12 roots x 7 qualities or "no chord": the chord of the beat before, by template
           matching (below)
* density  note onsets per beat in the bar before, in 5 buckets
* position steps since the bar line (the sampler knows it exactly)
* back1 .. back8  lookback (Magenta's Lookback RNN, as inputs): the highest pitch that
           started at this moment 1, 2, 4 and 8 bars earlier, or "no note started there"
* gap1 .. gap8      ... and how many steps later the next note started there (if it did before
           now): a phrase's rhythm and melody a bar, two bars or a phrase back
* style    the piece's style (first-level subfolder of the training folder), per piece

Checkpoints from before (ModelConfig.causal_controls False) read the whole piece's key, the
current beat's chord and the current bar's density; `causal=False` computes those for them.
"""
from __future__ import annotations

import numpy as np

from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, TempoMap
from .theory import (CHORD_UNKNOWN, KEY_UNKNOWN, N_CHORDS, N_KEYS, NO_CHORD, QUALITIES, chord_label,
                     chord_pitch_classes, estimate_key_index, parse_chord, running_keys)
from .tokenizer import token_times

CONTROLS_VERSION = 3  # part of the token cache key: bump when any estimate here or in theory.py changes

# ---------------------------------------------------------------- chords

# one row per chord: its pitch classes, unit length (cosine similarity with a histogram)
TEMPLATES = np.zeros((NO_CHORD, 12))
for _q, _intervals in enumerate(QUALITIES.values()):
    for _root in range(12):
        TEMPLATES[_root * len(QUALITIES) + _q, [(_root + i) % 12 for i in _intervals]] = 1.0
TEMPLATES /= np.linalg.norm(TEMPLATES, axis=1, keepdims=True)
KEEP_PREVIOUS = 0.9  # a beat keeps the previous chord unless another fits clearly better


MAX_PROGRESSION_BARS = 4096  # a progression repeats, so more bars than any piece is never needed
MAX_CHORDS_PER_BAR = 16
MAX_CHORDS_FILE_BYTES = 1 << 20


def parse_progression(text: str) -> list[int]:
    words = text.replace(",", " ").replace("|", " ").split()
    if len(words) > MAX_PROGRESSION_BARS:
        raise ValueError(f"--chords: {len(words):,} chords; at most {MAX_PROGRESSION_BARS:,} (one per bar, repeated)")
    chords = [parse_chord(c) for c in words]
    if not chords:
        raise ValueError("--chords: give at least one chord, e.g. \"Dm7 G7 Cmaj7 Cmaj7\"")
    return chords


def progression_label(bars, limit: int = 8) -> str:
    """'Dm7 G7 C/F ...': the first `limit` bars, so a long progression prints one short line."""
    text = " ".join("/".join(chord_label(c) for c in bar) for bar in bars[:limit])
    return text + (f" ... ({len(bars):,} bars)" if len(bars) > limit else "")


def beat_histograms(notes: np.ndarray, n_beats: int, resolution: int) -> np.ndarray:
    """(n_beats, 12): how long each pitch class sounds within each beat (drums excluded)."""
    hist = np.zeros((n_beats, 12))
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0 or n_beats == 0:
        return hist
    onset, end = pitched[:, ONSET].astype(np.int64), (pitched[:, ONSET] + pitched[:, DURATION]).astype(np.int64)
    pc = pitched[:, PITCH] % 12
    first = onset // resolution
    last = (end - 1) // resolution
    # a note adds to its first beat (up to the beat's end), to its last beat (from the beat's
    # start) when that is another beat, and a whole beat to each beat between (as a difference:
    # +resolution from the second beat on, -resolution from the last, summed over the beats).
    # Whole steps: float64 sums of integers are exact in any order, so this equals adding each
    # overlap one by one.
    size = max(n_beats, int(last.max()) + 1) * 12
    head = np.bincount(first * 12 + pc, weights=np.minimum(end, (first + 1) * resolution) - onset, minlength=size)
    more = last > first
    if more.any():
        tail_pc, tail_first, tail_last = pc[more], first[more], last[more]
        head += np.bincount(tail_last * 12 + tail_pc, weights=end[more] - tail_last * resolution, minlength=size)
        between = tail_last > tail_first + 1
        if between.any():
            rise = np.bincount((tail_first[between] + 1) * 12 + tail_pc[between], minlength=size)
            fall = np.bincount(tail_last[between] * 12 + tail_pc[between], minlength=size)
            head += np.cumsum((rise - fall).reshape(-1, 12), axis=0).reshape(-1) * resolution
    hist += head.reshape(-1, 12)[:n_beats]
    return hist


def estimate_chords(notes: np.ndarray, n_beats: int, resolution: int) -> np.ndarray:
    """One chord per beat by template matching: the cosine similarity of the beat's pitch-class
    durations with each chord's pitch classes; the previous chord is kept unless another scores
    clearly higher (a lone passing note does not change the harmony); silence is "no chord"."""
    hist = beat_histograms(notes, n_beats, resolution)
    norms = np.sqrt(np.add.reduce(hist * hist, axis=1))  # np.linalg.norm(axis=1), inlined
    sounding = norms > 0
    scores = np.zeros((len(hist), NO_CHORD))  # silent beats: no scores needed (they get NO_CHORD)
    scores[sounding] = (hist[sounding] / norms[sounding, None]) @ TEMPLATES.T
    # rounded: equal scores (two templates, or the keep threshold met exactly) then compare equal
    # on every CPU, whatever order its matrix product adds in
    return keep_previous_chord(scores.round(9), sounding)


def keep_previous_chord(scores: np.ndarray, sounding: np.ndarray) -> np.ndarray:
    """The chord of each beat from its template scores (beats, 84): the best, unless the previous
    beat's chord scores at least KEEP_PREVIOUS of the best; NO_CHORD where nothing sounds.

    The same answer as going beat by beat, found a run at a time: a chord, once chosen (the best
    of its beat), lasts until the first later beat where it is not kept (a search in a table of
    which chords each beat keeps); there the beat's best takes over, or NO_CHORD in silence."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    best = scores.argmax(axis=1)
    kept = sounding[:, None] & (scores >= (KEEP_PREVIOUS * scores[np.arange(n), best])[:, None])
    # one byte per beat and chord, chord by chord: "the next beat that drops chord c" is a byte search
    table, sound = kept.T.tobytes(), sounding.tobytes()
    best = best.tolist()
    starts, values = [0], [NO_CHORD]  # runs of one value: where each starts, and the value
    b = sound.find(1)
    while b != -1:  # b sounds, and the chord before it (if any) was not kept here: its best starts
        chord = best[b]
        row = chord * n
        e = table.find(0, row + b + 1, row + n)
        e = n if e == -1 else e - row
        starts += (b, e)
        values += (chord, NO_CHORD)
        b = sound.find(1, e) if e < n else -1
    starts.append(n)
    return np.repeat(np.array(values, dtype=np.int64), np.diff(starts))


def chord_tone_rate(notes: np.ndarray, chords_per_beat, resolution: int, strong_every: int = 2) -> float:
    """Share of the pitched notes sounding at strong beats (every `strong_every`-th beat: 1 and 3
    in 4/4) whose pitch class belongs to that beat's chord. Beats without a chord are skipped."""
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    hits = total = 0
    for b in range(0, len(chords_per_beat), strong_every):
        tones = chord_pitch_classes(int(chords_per_beat[b]))
        if not tones:
            continue
        t = b * resolution
        sounding = pitched[(pitched[:, ONSET] <= t) & (pitched[:, ONSET] + pitched[:, DURATION] > t)]
        hits += int(np.isin(sounding[:, PITCH] % 12, tones).sum())
        total += len(sounding)
    return hits / total if total else float("nan")


# ---------------------------------------------------------------- density

DENSITY_EDGES = (1.0, 1.75, 2.5, 3.5)  # note onsets per beat
DENSITY_UNKNOWN = len(DENSITY_EDGES) + 1
N_DENSITY = DENSITY_UNKNOWN + 1
DENSITY_NAMES = {"low": 1, "medium": 2, "high": 3}


def density_bucket(onsets_per_beat: float) -> int:
    return int(np.searchsorted(DENSITY_EDGES, onsets_per_beat, side="right"))


def parse_density(text) -> int:
    """'low' | 'medium' | 'high' | a number of note onsets per beat -> bucket."""
    t = str(text).strip().lower()
    if t in DENSITY_NAMES:
        return DENSITY_NAMES[t]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"unknown density {text!r}: use low, medium, high or note onsets per beat (e.g. 2)") from None
    if not 0 <= value <= 48:
        raise ValueError("--density: note onsets per beat must be between 0 and 48")
    return density_bucket(value)


def distinct_onsets(notes: np.ndarray) -> np.ndarray:
    """The distinct onsets, ascending (np.unique, without its sort when they are sorted already,
    as a Song's notes are)."""
    onsets = notes[:, ONSET]
    if len(onsets) < 2:
        return onsets.copy()
    step = onsets[1:] != onsets[:-1]
    if (onsets[1:] < onsets[:-1]).any():
        return np.unique(onsets)
    return onsets[np.concatenate(([True], step))]


def bar_densities(notes: np.ndarray, grid: TempoMap, n_bars: int, resolution: int) -> np.ndarray:
    """Bucket of each bar's distinct note onsets per beat."""
    onsets = distinct_onsets(notes)
    starts = grid.bar_starts(np.arange(n_bars + 1))
    counts = np.diff(np.searchsorted(onsets, starts))
    beats = np.diff(starts) / resolution
    rate = counts / np.maximum(beats, 1e-9)
    return np.searchsorted(DENSITY_EDGES, rate, side="right").astype(np.int64)


# ---------------------------------------------------------------- per token

LOOKBACK_BARS = (1, 2, 4, 8)
BACK = tuple(f"back{k}" for k in LOOKBACK_BARS)
GAP = tuple(f"gap{k}" for k in LOOKBACK_BARS)
# style is stored last: it is per file, added when a corpus is stored (data.TokenStore.build)
COLUMNS = ("key", "chord", "density", "position") + BACK + GAP + ("style",)
KEY, CHORD, DENSITY, POSITION = range(4)
STYLE = len(COLUMNS) - 1
NO_ONSET = 128  # back*: no note started there; 129: unknown (before the piece, or a shorter bar)
# What checkpoints from before causal controls read from the notes of the whole beat, bar or
# piece, i.e. partly from notes they have not seen yet: every figure hides these for them.
FROM_FUTURE_NOTES = ("key", "chord", "density")
POSITION_BEATS = 8  # positions are told exactly up to 8 beats into a bar, then "unknown"


def sizes(resolution: int, n_styles: int) -> dict:
    """Number of values of each control, "unknown" included (the last value)."""
    gap = POSITION_BEATS * resolution + 2  # 0: none, 1..cap steps, unknown
    return {"key": N_KEYS, "chord": N_CHORDS, "density": N_DENSITY,
            "position": POSITION_BEATS * resolution + 1, **{name: NO_ONSET + 2 for name in BACK},
            **{name: gap for name in GAP}, "style": n_styles + 1}


def unknown_values(resolution: int, n_styles: int) -> np.ndarray:
    return np.array([n - 1 for n in sizes(resolution, n_styles).values()], dtype=np.int64)


def position_in_bar(grid: TempoMap, times: np.ndarray, resolution: int) -> np.ndarray:
    """Steps since the bar line, capped: the value past the cap means "unknown"."""
    times = np.asarray(times, dtype=np.int64)
    return np.minimum(times - grid.bar_starts(grid.bars_of(times)), POSITION_BEATS * resolution)


def chord_inputs(notes: np.ndarray, n_beats: int, resolution: int, causal: bool = True) -> np.ndarray:
    """The chord input of each beat: the estimated chord of the beat before (no chord before the
    first), or with `causal=False` the beat's own chord (older checkpoints)."""
    chords = estimate_chords(notes, n_beats, resolution)
    return np.concatenate([[NO_CHORD], chords[:-1]]) if causal else chords


def onset_tops(notes: np.ndarray) -> tuple:
    """(distinct onsets of the pitched notes, ascending; the highest pitch starting at each)."""
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    onsets, first = np.unique(pitched[:, ONSET].astype(np.int64), return_inverse=True)
    tops = np.full(len(onsets), -1, dtype=np.int64)
    np.maximum.at(tops, first, pitched[:, PITCH].astype(np.int64))
    return onsets, tops


def lookback(notes: np.ndarray, grid: TempoMap, times: np.ndarray, resolution: int) -> np.ndarray:
    """(len(times), 2 * len(LOOKBACK_BARS)): for each time t and k bars back, the highest pitch
    starting at t's place in the bar k bars earlier (NO_ONSET: none), then the steps from there to
    the next onset if that came before t (0: none). Unknown where that place does not exist.
    Causal: every note read started before t."""
    times = np.asarray(times, dtype=np.int64)
    first = np.concatenate(([True], times[1:] != times[:-1]))
    if len(times) > 1 and not first.all() and (times[1:] >= times[:-1]).all():
        # a piece's tokens, in time order: each time once (a note's three tokens share one)
        return lookback(notes, grid, times[first], resolution)[np.cumsum(first) - 1]
    onsets, tops = onset_tops(notes)
    cap = POSITION_BEATS * resolution
    padded, padded_tops = np.append(onsets, -1), np.append(tops, NO_ONSET)  # index len(onsets): no onset
    out = np.empty((len(times), 2 * len(LOOKBACK_BARS)), dtype=np.int64)
    for i, then in enumerate(earlier_places(grid, times).T):
        known = then >= 0
        at = np.searchsorted(onsets, then)
        hit = known & (padded[at] == then)
        out[:, i] = np.where(hit, padded_tops[at], NO_ONSET)
        nxt = padded[np.searchsorted(onsets, then, side="right")]
        gap = nxt - then
        out[:, len(LOOKBACK_BARS) + i] = np.where((nxt >= 0) & (nxt < times) & (gap <= cap), gap, 0)
        out[~known, i], out[~known, len(LOOKBACK_BARS) + i] = NO_ONSET + 1, cap + 1
    return out


def earlier_places(grid: TempoMap, times) -> np.ndarray:
    """(len(times), len(LOOKBACK_BARS)): each time's place in the bar 1, 2, 4 and 8 bars earlier;
    -1 where that bar is before the piece or too short to hold the place."""
    times = np.asarray(times, dtype=np.int64)
    bars = grid.bars_of(times)
    position = times - grid.bar_starts(bars)
    out = np.full((len(times), len(LOOKBACK_BARS)), -1, dtype=np.int64)
    for i, k in enumerate(LOOKBACK_BARS):
        earlier = np.maximum(bars - k, 0)
        then = grid.bar_starts(earlier) + position
        known = (bars >= k) & (then < grid.bar_starts(earlier + 1))
        out[known, i] = then[known]
    return out


def controls_for(song, tokens, tok, causal: bool = True) -> np.ndarray:
    """(len(tokens), len(COLUMNS) - 1) uint8: key, chord, density, position and lookback after
    each token of `song`'s encoding (style is added per file when the corpus is stored). Causal (the default, what
    models learn now): each read from the notes before the token's beat or bar, so a
    likelihood may give them. `causal=False`: the older inputs (the whole piece's key, the
    current beat's chord, the current bar's density) that older checkpoints were trained on."""
    res = tok.config.resolution
    grid = song.tempo_map
    times = token_times(tokens, tok, grid)
    last = int(max(times.max() if len(times) else 0, song.end)) + 1
    n_beats = last // res + 1
    bars = grid.bars_of(np.append(times, last))  # each token's bar, and the bar of the end
    n_bars = int(bars[-1]) + 2
    bars = bars[:-1]
    out = np.empty((len(tokens), len(COLUMNS) - 1), dtype=np.uint8)
    beats = times // res
    if causal:
        out[:, KEY] = running_keys(song.notes, n_beats, res)[beats]
        out[:, CHORD] = chord_inputs(song.notes, n_beats, res)[beats]
        out[:, DENSITY] = np.concatenate([[DENSITY_UNKNOWN], bar_densities(song.notes, grid, n_bars, res)])[bars]
    else:
        out[:, KEY] = estimate_key_index(song.notes)
        out[:, CHORD] = estimate_chords(song.notes, n_beats, res)[beats]
        out[:, DENSITY] = bar_densities(song.notes, grid, n_bars, res)[bars]
    out[:, POSITION] = np.minimum(times - grid.bar_starts(bars), POSITION_BEATS * res)  # position_in_bar
    out[:, POSITION + 1:] = lookback(song.notes, grid, times, res)
    return out


def transpose(controls: np.ndarray, shift: np.ndarray, names=COLUMNS) -> None:
    """Move key, chord and lookback pitches by `shift` semitones per row (in place; controls
    (B, T, C), its columns the controls `names`, a model's or every stored one)."""
    s = np.asarray(shift, dtype=np.int64)[:, None]
    q = len(QUALITIES)
    for column, name in enumerate(names):
        if name not in ("key", "chord") + BACK:
            continue
        value = controls[..., column].astype(np.int64)
        if name == "key":
            moved = np.where(value < KEY_UNKNOWN, (value // 12) * 12 + (value % 12 + s) % 12, value)
        elif name == "chord":
            moved = np.where(value < NO_CHORD, ((value // q + s) % 12) * q + value % q, value)
        else:
            moved = np.where(value < NO_ONSET, np.clip(value + s, 0, NO_ONSET - 1), value)
        controls[..., column] = moved


def hide(controls: np.ndarray, rng, probability: float, unknown: np.ndarray) -> None:
    """Set each control of each row to "unknown" with `probability` (in place; (B, T, C)):
    the model learns to do without any of them."""
    hidden = rng.random((controls.shape[0], controls.shape[2])) < probability
    controls[:] = np.where(hidden[:, None, :], unknown[None, None, :controls.shape[2]], controls)


def model_controls(resolution: int, styles, dims: dict, use_controls: bool = True) -> tuple:
    """The (name, values, dim) control inputs of a new model: every control with a size in
    `dims`, style only when the corpus has styles."""
    if not use_controls:
        return ()
    n = sizes(resolution, len(styles))
    if n["style"] > 256:  # stored as one byte per control and token
        raise ValueError(f"{len(styles)} styles: the style input allows at most 255")
    if max(n.values()) > 256:
        raise ValueError(f"--resolution {resolution}: the control inputs allow at most 31 steps per quarter note "
                         f"(positions are stored in a byte); use --no-controls for a finer grid")
    return tuple((name, n[name], dims[name]) for name in COLUMNS if dims.get(name) and (name != "style" or styles))


def key_prior(controls: np.ndarray, styles) -> dict:
    """How much of the corpus (in tokens) is in each of the 24 keys, per style name ("" for music
    without a style): generate draws its key from this when none is asked for, so the pair
    (key, music) is sampled as the corpus has it rather than from the blurrier key-hidden model."""
    prior = {}
    keys, style_ids = controls[:, KEY].astype(np.int64), controls[:, STYLE].astype(np.int64)
    for sid in np.unique(style_ids):
        counts = np.bincount(keys[(style_ids == sid) & (keys < KEY_UNKNOWN)], minlength=KEY_UNKNOWN)[:KEY_UNKNOWN]
        if counts.sum():
            prior[styles[sid] if sid < len(styles) else ""] = counts.tolist()
    return prior


def style_voices(tokens: np.ndarray, controls: np.ndarray, tok, styles, share: float = 0.95) -> dict:
    """Per style name ("" for music without a style): how many notes start together at `share`
    of the corpus's note onsets (1: the style is a single line; 4: four-part chords). Generation
    holds a style to this texture, so guidance or a wrong style guess cannot turn a line into
    chords."""
    from .tokenizer import BAR, BOS, DURATION_T, EOS, SHIFT

    kinds = tok.token_type[np.asarray(tokens, dtype=np.int64)]
    notes = kinds == DURATION_T  # one DURATION token per note
    onset = np.cumsum(np.isin(kinds, [BOS, EOS, BAR, SHIFT]))  # time moves only at these
    out = {}
    style_ids = controls[:, STYLE].astype(np.int64)
    for sid in np.unique(style_ids):
        picked = notes & (style_ids == sid)
        if not picked.any():
            continue
        sizes = np.unique(onset[picked], return_counts=True)[1]
        out[styles[sid] if sid < len(styles) else ""] = int(np.ceil(np.quantile(sizes, share)))
    return out


def pick_key(prior: dict, style: str | None, rng: np.random.Generator) -> int:
    """A key drawn from the style's share of the corpus (all styles together when the style is
    not in the prior; every key equally for a checkpoint without one)."""
    counts = prior.get(style or "") if prior else None
    if counts is None and prior:
        counts = np.sum([c for c in prior.values()], axis=0)
    weights = np.asarray(counts if counts is not None else np.ones(KEY_UNKNOWN), dtype=np.float64)
    return int(rng.choice(KEY_UNKNOWN, p=weights / weights.sum()))


def columns_of(model_config) -> list:
    """Which stored control columns a model reads, in its input order."""
    return [COLUMNS.index(name) for name in model_config.control_names]


def unknown_of(model_config) -> np.ndarray:
    return np.array([values - 1 for _, values, _ in model_config.controls], dtype=np.int64)


def causal(controls: np.ndarray, model_config, hide=FROM_FUTURE_NOTES) -> np.ndarray:
    """A copy of a model's control inputs (..., n controls, in the model's order) with the
    controls named in `hide` set to unknown: by default every control computed from notes the
    model is about to predict, so a likelihood measured with them is causal."""
    out = np.array(controls, dtype=np.int64, copy=True)
    unknown = unknown_of(model_config)
    for i, name in enumerate(model_config.control_names):
        if name in hide:
            out[..., i] = unknown[i]
    return out


# ---------------------------------------------------------------- at generation time

class Heard:
    """Per sampled row, the highest pitch started at each recent step (a ring over the last
    bars, seeded with the primer's notes): what the lookback inputs read while generating."""

    def __init__(self, rows: int, notes: np.ndarray | None, cap: int, longest_bar: int):
        """cap: the longest gap told (steps); the ring spans the longest lag in the longest bars
        and a gap, so no slot is overwritten while a lag can still read it."""
        self.cap = cap
        self.span = 1 << int(np.ceil(np.log2((max(LOOKBACK_BARS) + 1) * max(longest_bar, 1) + cap + 1)))
        self.pitch = np.full((rows, self.span), -1, dtype=np.int64)
        self.time = np.full((rows, self.span), -1, dtype=np.int64)
        if notes is not None and len(notes):
            onsets, tops = onset_tops(notes)
            recent = onsets > onsets.max() - self.span
            self.pitch[:, onsets[recent] % self.span] = tops[recent]
            self.time[:, onsets[recent] % self.span] = onsets[recent]

    def record(self, pitches: np.ndarray, now: np.ndarray) -> None:
        """pitches: per row the pitch just started at `now`, or -1."""
        rows = np.flatnonzero(pitches >= 0)
        slot = now[rows] % self.span
        same = self.time[rows, slot] == now[rows]
        self.pitch[rows, slot] = np.where(same, np.maximum(self.pitch[rows, slot], pitches[rows]), pitches[rows])
        self.time[rows, slot] = now[rows]

    def values(self, times: np.ndarray, then: np.ndarray) -> tuple:
        """(back, gap) per row for one lag: `then` per row is the place k bars earlier (-1:
        unknown), as `lookback` computes them from a finished piece's notes."""
        rows = np.arange(len(times))
        known = then >= 0
        slot = np.where(known, then, 0) % self.span
        hit = known & (self.time[rows, slot] == then)
        back = np.where(hit, self.pitch[rows, slot], NO_ONSET)
        later = then[:, None] + np.arange(1, self.cap + 1)[None, :]
        heard = (self.time[rows[:, None], later % self.span] == later) & (later < times[:, None])
        gap = np.where(heard.any(axis=1), heard.argmax(axis=1) + 1, 0)
        return np.where(known, back, NO_ONSET + 1), np.where(known, gap, self.cap + 1)


class ControlPlan:
    """What the sampler tells the model at each step: fixed key, style and density (or
    "unknown"), a chord progression laid over the bars from `start` on (or "unknown"), the
    exact position in the bar, computed from each row's time, and what each row played bars
    earlier (lookback)."""

    def __init__(self, model_config, resolution: int, grid: TempoMap, key: int | None = None,
                 style: int | None = None, density: int | None = None, progression=None, start: int = 0,
                 earlier_chords=None, primer_notes: np.ndarray | None = None):
        """progression: bars, each a list of chord indices sharing the bar equally (one per bar,
        or one per beat); repeated to any length; applies from step `start` on. Before `start`
        (the primer), `earlier_chords` (one per beat, as estimated) are told. primer_notes: what
        the lookback inputs hear before the first sampled note."""
        self.earlier_chords = earlier_chords
        self.primer_notes, self.heard = primer_notes, None
        self.names = model_config.control_names
        self.unknown = unknown_of(model_config)
        self.res, self.grid, self.start = resolution, grid, start
        self.progression = progression
        self.fixed = {"key": key, "style": style, "density": density}
        self.start_bar = grid.bar_of(start)
        self.memo = {}
        self.last_times, self.last_values = None, None

    def _at(self, time: int) -> tuple:
        """(position, chord) at one time, memoized: a note's three tokens share their time."""
        hit = self.memo.get(time)
        if hit is None:
            grid = self.grid
            bar = grid.bar_of(time)  # the bar holding `time`
            start = grid.bar_start(bar)
            position = min(time - start, POSITION_BEATS * self.res)
            chord = CHORD_UNKNOWN
            if time < self.start:
                beat = time // self.res
                if self.earlier_chords is not None and beat < len(self.earlier_chords):
                    chord = int(self.earlier_chords[beat])
            elif self.progression:
                chords = self.progression[(bar - self.start_bar) % len(self.progression)]
                length = max(1, grid.bar_start(bar + 1) - start)
                chord = chords[min(len(chords) - 1, (time - start) * len(chords) // length)]
            hit = self.memo[time] = (position, chord)
        return hit

    def record(self, pitches: np.ndarray, now: np.ndarray) -> None:
        """Each row's sampled pitch at `now` (-1: none), for the lookback inputs."""
        if self.heard is not None:
            self.heard.record(pitches, now)

    def values(self, times: np.ndarray) -> np.ndarray:
        """(rows, controls) for rows whose next note would start at `times`; the very same array
        while the times stay the same (the network then reuses its control input too)."""
        now = np.asarray(times, dtype=np.int64)
        times = now.tolist()
        if times == self.last_times:
            return self.last_values
        at = [self._at(t) for t in times]
        out = np.empty((len(at), len(self.names)), dtype=np.int64)
        looked = {}
        if any(name in self.names for name in BACK + GAP):
            if self.heard is None:
                self.heard = Heard(len(times), self.primer_notes, POSITION_BEATS * self.res, self.grid.longest_bar())
            for back, gap, then in zip(BACK, GAP, earlier_places(self.grid, now).T):
                looked[back], looked[gap] = self.heard.values(now, then)
        for i, name in enumerate(self.names):
            if name == "position":
                out[:, i] = [a[0] for a in at]
            elif name == "chord":
                out[:, i] = [a[1] for a in at]
            elif name in looked:
                out[:, i] = looked[name]
            else:
                value = self.fixed[name]
                out[:, i] = self.unknown[i] if value is None else value
        self.last_times, self.last_values = times, out
        return out


def parse_chords_file(text: str) -> list:
    """One bar per line; several chords on a line share the bar equally (per beat in 4/4 when
    there are four). Text after # is a comment and a line holding only a comment is skipped. A
    blank line between bars is refused: it could mean a bar with no chord (write N.C.) or a
    section break (write #), and dropping it would shift every later bar. Trailing blank lines
    are fine."""
    bars = []
    lines = text.rstrip().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"--chords-file line {number} is blank: write N.C. for a bar with no chord, "
                             f"or # for a line that is not a bar")
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        chords = line.replace("|", " ").split()
        if not chords:
            raise ValueError(f"--chords-file line {number} holds no chord (N.C.: a bar with no chord)")
        if len(chords) > MAX_CHORDS_PER_BAR:
            raise ValueError(f"--chords-file line {number}: {len(chords)} chords in one bar; "
                             f"at most {MAX_CHORDS_PER_BAR}")
        if len(bars) == MAX_PROGRESSION_BARS:
            raise ValueError(f"--chords-file: more than {MAX_PROGRESSION_BARS:,} bars (a progression repeats)")
        try:
            bars.append([parse_chord(c) for c in chords])
        except ValueError as exc:
            raise ValueError(f"--chords-file line {number}: {exc}") from None
    if not bars:
        raise ValueError("--chords-file holds no chords")
    return bars


def read_chords_file(path) -> list:
    """A bounded read: a device such as /dev/zero or a huge file is refused, not read into memory."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_CHORDS_FILE_BYTES + 1)
    if len(data) > MAX_CHORDS_FILE_BYTES:
        raise ValueError(f"--chords-file {path}: larger than {MAX_CHORDS_FILE_BYTES >> 20} MB; "
                         f"a progression file holds one line per bar")
    if b"\0" in data:
        raise ValueError(f"--chords-file {path}: not a text file")
    return parse_chords_file(data.decode("utf-8", errors="replace"))
