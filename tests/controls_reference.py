"""The control estimators as first written (loops per token, per key, per beat, per bar): the
reference that the fast versions in melodylstm.controls must match value for value."""
import numpy as np

from melodylstm import controls as ctl
from melodylstm import theory
from melodylstm.midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM


def estimate_key(notes):
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0:
        raise ValueError("no pitched notes to estimate a key from")
    hist = np.bincount(pitched[:, PITCH] % 12, weights=pitched[:, DURATION], minlength=12)
    best, best_key = -2.0, (0, "major")
    for mode, profile in (("major", theory.MAJOR_PROFILE), ("minor", theory.MINOR_PROFILE)):
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1]
            if np.isfinite(r) and r > best:
                best, best_key = r, (tonic, mode)
    return best_key


def estimate_key_index(notes):
    try:
        return theory.key_index(*estimate_key(notes))
    except ValueError:
        return theory.KEY_UNKNOWN


def beat_histograms(notes, n_beats, resolution):
    hist = np.zeros((n_beats, 12))
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0 or n_beats == 0:
        return hist
    onset, end = pitched[:, ONSET].astype(np.int64), (pitched[:, ONSET] + pitched[:, DURATION]).astype(np.int64)
    pc = pitched[:, PITCH] % 12
    first = onset // resolution
    span = int(((end - 1) // resolution - first).max()) + 1
    for k in range(span):
        beat = first + k
        overlap = np.minimum(end, (beat + 1) * resolution) - np.maximum(onset, beat * resolution)
        ok = (overlap > 0) & (beat < n_beats)
        np.add.at(hist, (beat[ok], pc[ok]), overlap[ok])
    return hist


def estimate_chords(notes, n_beats, resolution):
    hist = beat_histograms(notes, n_beats, resolution)
    norms = np.linalg.norm(hist, axis=1, keepdims=True)
    scores = (np.divide(hist, norms, out=np.zeros_like(hist), where=norms > 0) @ ctl.TEMPLATES.T).round(9)
    out = np.full(n_beats, theory.NO_CHORD, dtype=np.int64)
    previous = theory.NO_CHORD
    for b in range(n_beats):
        if norms[b, 0] == 0:
            previous = theory.NO_CHORD
            continue
        best = int(scores[b].argmax())
        if previous < theory.NO_CHORD and scores[b, previous] >= ctl.KEEP_PREVIOUS * scores[b, best]:
            best = previous
        out[b] = previous = best
    return out


def bar_densities(notes, grid, n_bars, resolution):
    out = np.zeros(n_bars, dtype=np.int64)
    onsets = np.unique(notes[:, ONSET]) if len(notes) else np.zeros(0, dtype=np.int64)
    starts = np.array([grid.bar_start(i) for i in range(n_bars + 1)])
    counts = np.diff(np.searchsorted(onsets, starts))
    beats = np.diff(starts) / resolution
    for i in range(n_bars):
        out[i] = ctl.density_bucket(counts[i] / max(beats[i], 1e-9))
    return out


def token_times(tokens, tok, grid):
    from melodylstm.tokenizer import BAR, SHIFT

    kinds, values = tok.token_type, tok.token_value
    out = np.zeros(len(tokens), dtype=np.int64)
    time, bar = 0, -1
    for i, t in enumerate(np.asarray(tokens).tolist()):
        kind = kinds[t]
        if kind == SHIFT:
            time += int(values[t])
        elif kind == BAR:
            bar += 1
            if grid.bar_start(bar) < time:
                bar = grid.bar_at_or_after(time)
            time = grid.bar_start(bar)
        out[i] = time
    return out


def controls_for(song, tokens, tok):
    res = tok.config.resolution
    grid = song.tempo_map
    times = token_times(tokens, tok, grid)
    last = int(max(times.max() if len(times) else 0, song.end)) + 1
    n_beats = last // res + 1
    n_bars = int(grid.bars_of(np.array([last]))[0]) + 2
    out = np.empty((len(tokens), len(ctl.COLUMNS) - 1), dtype=np.uint8)
    out[:, ctl.KEY] = estimate_key_index(song.notes)
    out[:, ctl.CHORD] = estimate_chords(song.notes, n_beats, res)[times // res]
    out[:, ctl.DENSITY] = bar_densities(song.notes, grid, n_bars, res)[grid.bars_of(times)]
    out[:, ctl.POSITION] = ctl.position_in_bar(grid, times, res)
    tops = {}
    for n in song.notes:
        if n[PROGRAM] != DRUMS:
            tops[int(n[ONSET])] = max(tops.get(int(n[ONSET]), -1), int(n[PITCH]))
    onsets = sorted(tops)
    for i, t in enumerate(times.tolist()):
        out[i, ctl.POSITION + 1:] = lookback_at(tops, onsets, grid, int(t), res)
    return out


def lookback_at(tops, onsets, grid, t, res):
    """One time's lookback values, from the highest pitch at each onset."""
    import bisect

    cap, n = ctl.POSITION_BEATS * res, len(ctl.LOOKBACK_BARS)
    out = [0] * (2 * n)
    bar = grid.bar_of(t)
    for i, k in enumerate(ctl.LOOKBACK_BARS):
        then = grid.bar_start(bar - k) + t - grid.bar_start(bar) if bar >= k else None
        if then is None or then >= grid.bar_start(bar - k + 1):
            out[i], out[n + i] = ctl.NO_ONSET + 1, cap + 1
            continue
        out[i] = tops.get(then, ctl.NO_ONSET)
        j = bisect.bisect_right(onsets, then)
        later = onsets[j] if j < len(onsets) else None
        out[n + i] = later - then if later is not None and later < t and later - then <= cap else 0
    return out
