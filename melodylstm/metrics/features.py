"""Musical features of pieces, compared between two sets (`melodylstm stats GENERATED REFERENCE`).

Objective evaluation in the manner of Yang & Lerch (2018), "On the evaluation of generative
models in music": per-piece features (definitions follow MusPy's metrics where it has them),
then for each feature the distribution of distances between pieces within each set (intra-set)
and across the sets (inter-set), smoothed by a Gaussian KDE on one shared grid. The overlapping
area (OA) and KL divergence between the reference's intra-set curve and the inter-set curve say
how far the generated set sits from the reference's own variety: OA near 1 and KL near 0 mean
the generated pieces are as close to the corpus as corpus pieces are to each other.

Memory stays flat whatever the folders hold: each set is at most MAX_PIECES pieces (a seeded
random sample of its files beyond that), each distance distribution at most MAX_PAIRS pairs (all
pairs up to that, a seeded random sample beyond), and the KDE sums its kernels in chunks. The
pairwise distances of 2,861 pieces were 4 million per feature, and their KDE needed 24 GB.
"""
from __future__ import annotations

import math

import numpy as np

from ..midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, MidiError, Song, read_midi
from ..theory import SCALES

RESOLUTION = 12
# note-length classes in beats, from 1/8 to 4 beats (Yang & Lerch use 12 classes; these are ours)
LENGTH_CLASSES = np.array([1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1, 3 / 2, 2, 3, 4])
IOI_CLASSES = LENGTH_CLASSES
MAX_PIECES = 2000  # pieces per set; the 410 chorales are all used
MAX_PAIRS = 100_000  # distances per distribution: every pair of up to 447 pieces (the chorales: 83,845)
KDE_CHUNK = 2048  # samples per step of the KDE: 256 x 2048 doubles = 4 MB per temporary


def pitched(song: Song) -> np.ndarray:
    return song.notes[song.notes[:, PROGRAM] != DRUMS]


def pitch_class_histogram(notes) -> np.ndarray:
    hist = np.bincount(notes[:, PITCH] % 12, minlength=12).astype(float)
    return hist / max(hist.sum(), 1)


def used_pitches(notes) -> float:
    return float(len(np.unique(notes[:, PITCH])))


def pitch_range(notes) -> float:
    return float(notes[:, PITCH].max() - notes[:, PITCH].min()) if len(notes) else 0.0


def average_pitch_interval(notes) -> float:
    """Mean absolute interval between successive notes (time order, then pitch), in semitones."""
    return float(np.abs(np.diff(notes[:, PITCH])).mean()) if len(notes) > 1 else 0.0


def _class_histogram(values_beats: np.ndarray, classes: np.ndarray) -> np.ndarray:
    if len(values_beats) == 0:
        return np.zeros(len(classes))
    nearest = np.abs(np.log(values_beats[:, None]) - np.log(classes[None, :])).argmin(axis=1)
    hist = np.bincount(nearest, minlength=len(classes)).astype(float)
    return hist / hist.sum()


def note_length_histogram(notes, resolution) -> np.ndarray:
    return _class_histogram(notes[:, DURATION] / resolution, LENGTH_CLASSES)


def inter_onset_histogram(notes, resolution) -> np.ndarray:
    onsets = np.unique(notes[:, ONSET])
    return _class_histogram(np.diff(onsets) / resolution, IOI_CLASSES)


def polyphony(notes) -> float:
    """Mean number of notes sounding, over the grid steps where at least one sounds (MusPy)."""
    if len(notes) == 0:
        return 0.0
    end = int((notes[:, ONSET] + notes[:, DURATION]).max())
    active = np.zeros(end + 1, dtype=np.int64)
    np.add.at(active, notes[:, ONSET], 1)
    np.add.at(active, notes[:, ONSET] + notes[:, DURATION], -1)
    sounding = np.cumsum(active)[:end]
    return float(sounding[sounding > 0].mean()) if (sounding > 0).any() else 0.0


def scale_consistency(notes) -> float:
    """Largest share of notes that fit one major or minor scale (MusPy)."""
    if len(notes) == 0:
        return 0.0
    hist = np.bincount(notes[:, PITCH] % 12, minlength=12)
    best = 0
    for scale in (SCALES["major"], SCALES["minor"]):
        for tonic in range(12):
            best = max(best, int(hist[(np.array(scale) + tonic) % 12].sum()))
    return best / len(notes)


def empty_beat_rate(notes, resolution) -> float:
    """Share of beats in which no note starts (MusPy)."""
    if len(notes) == 0:
        return 1.0
    beats = int(math.ceil((notes[:, ONSET] + notes[:, DURATION]).max() / resolution))
    busy = np.zeros(max(beats, 1), dtype=bool)
    busy[notes[:, ONSET] // resolution] = True
    return float(1 - busy.mean())


def bar_repetition(notes, grid) -> float:
    """Share of bars with notes that repeat an earlier bar of the piece exactly or transposed
    (same rhythm, same intervals): how much a piece reuses its own material, as real tunes do."""
    if len(notes) == 0:
        return 0.0
    bars = grid.bars_of(notes[:, ONSET])
    offsets = notes[:, ONSET] - grid.bar_starts(bars)
    seen, repeats, total = set(), 0, 0
    for b in np.unique(bars):
        part = bars == b
        shape = tuple(sorted(zip(offsets[part].tolist(), notes[part, DURATION].tolist(),
                                 (notes[part, PITCH] - notes[part, PITCH].min()).tolist())))
        repeats += shape in seen
        total += 1
        seen.add(shape)
    return repeats / total


FEATURES = {
    "pitch_count": lambda n, r: used_pitches(n),
    "pitch_class_histogram": lambda n, r: pitch_class_histogram(n),
    "pitch_range": lambda n, r: pitch_range(n),
    "avg_pitch_interval": lambda n, r: average_pitch_interval(n),
    "inter_onset_histogram": inter_onset_histogram,
    "note_length_histogram": note_length_histogram,
    "polyphony": lambda n, r: polyphony(n),
    "scale_consistency": lambda n, r: scale_consistency(n),
    "empty_beat_rate": empty_beat_rate,
}


def piece_features(song: Song) -> dict:
    notes = pitched(song)
    out = {name: np.atleast_1d(np.asarray(fn(notes, song.resolution), dtype=float)) for name, fn in FEATURES.items()}
    out["bar_repetition"] = np.atleast_1d(bar_repetition(notes, song.tempo_map))
    return out


def load_set(path, split: str = "all", val_fraction: float = 0.1, max_pieces: int = MAX_PIECES,
             seed: int = 0) -> tuple[list[dict], list[dict], int]:
    """Features of every readable MIDI file in a folder (or one file); skipped files; files found.
    split 'val'/'train' keeps only that part of the content-hash split training uses. Beyond
    `max_pieces` files, a random sample of them (the same for the same `seed`)."""
    import hashlib

    from ..data import find_midi_files, is_validation

    files, skipped = find_midi_files(path)
    if split != "all":
        files = [f for f in files
                 if is_validation(hashlib.blake2b(open(f, "rb").read(), digest_size=16).hexdigest(), val_fraction)
                 == (split == "val")]
    found = len(files)
    if found > max_pieces:
        keep = np.random.default_rng(seed).choice(len(files), max_pieces, replace=False)
        files = [files[i] for i in sorted(keep)]
    features = []
    for f in files:
        try:
            song = read_midi(f, RESOLUTION)
        except MidiError as exc:
            skipped.append({"path": str(f), "reason": str(exc)})
            continue
        if len(pitched(song)) < 2:
            skipped.append({"path": str(f), "reason": "fewer than 2 pitched notes"})
            continue
        features.append(piece_features(song))
    return features, skipped, found


# ---------------------------------------------------------------- distances and their distributions

def pair_indices(n: int, m: int | None = None, max_pairs: int = MAX_PAIRS, rng=None):
    """Row indices of the pairs to compare: within n rows (each pair once) or across n and m rows.
    Every pair while there are at most `max_pairs`, else `max_pairs` pairs drawn at random."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if m is None:
        if n * (n - 1) // 2 <= max_pairs:
            return np.triu_indices(n, k=1)
        i = rng.integers(0, n, max_pairs)
        j = rng.integers(0, n - 1, max_pairs)
        return i, j + (j >= i)  # uniform over the other rows: never a piece with itself
    if n * m <= max_pairs:
        return np.divmod(np.arange(n * m), m)
    return rng.integers(0, n, max_pairs), rng.integers(0, m, max_pairs)


def pairwise(a: np.ndarray, b: np.ndarray | None = None, max_pairs: int = MAX_PAIRS, rng=None) -> np.ndarray:
    """Euclidean distances between rows: within a (each pair once) or across a and b; at most
    `max_pairs` of them (a random sample of the pairs beyond that)."""
    i, j = pair_indices(len(a), None if b is None else len(b), max_pairs, rng)
    return np.linalg.norm(a[i] - (a if b is None else b)[j], axis=1)


def kde(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE (Scott's bandwidth) evaluated on `grid`, normalized to integrate to 1 there."""
    if len(samples) == 0:
        return np.zeros_like(grid)
    std = samples.std()
    bandwidth = max(std * len(samples) ** (-1 / 5), (grid[-1] - grid[0]) / 200, 1e-9)
    density = np.zeros(len(grid))
    for start in range(0, len(samples), KDE_CHUNK):  # grid x chunk at a time, not grid x samples
        z = (grid[:, None] - samples[None, start:start + KDE_CHUNK]) / bandwidth
        density += np.exp(-0.5 * z * z).sum(axis=1)
    area = np.trapezoid(density, grid) if hasattr(np, "trapezoid") else np.trapz(density, grid)
    return density / area if area > 0 else density


def overlap_area(p, q, grid) -> float:
    m = np.minimum(p, q)
    return float(np.trapezoid(m, grid) if hasattr(np, "trapezoid") else np.trapz(m, grid))


def kl_divergence(p, q, grid) -> float:
    eps = 1e-10
    f = p * np.log((p + eps) / (q + eps))
    return float(max(0.0, np.trapezoid(f, grid) if hasattr(np, "trapezoid") else np.trapz(f, grid)))


def compare(generated: list[dict], reference: list[dict], grid_points: int = 256, seed: int = 0,
            max_pairs: int = MAX_PAIRS) -> dict:
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError("stats needs at least 2 usable pieces in each set")
    rng = np.random.default_rng(seed)
    out = {}
    for name in generated[0]:
        g = np.stack([f[name] for f in generated])
        r = np.stack([f[name] for f in reference])
        intra_g, intra_r = pairwise(g, None, max_pairs, rng), pairwise(r, None, max_pairs, rng)
        inter = pairwise(g, r, max_pairs, rng)
        top = max(intra_g.max(initial=0), intra_r.max(initial=0), inter.max(initial=0))
        grid = np.linspace(0, top * 1.1 + 1e-6, grid_points)  # one shared grid for every curve
        pg, pr, pi = kde(intra_g, grid), kde(intra_r, grid), kde(inter, grid)
        out[name] = {
            "generated_mean": g.mean(axis=0).tolist() if g.shape[1] > 1 else float(g.mean()),
            "reference_mean": r.mean(axis=0).tolist() if r.shape[1] > 1 else float(r.mean()),
            "overlap_area": overlap_area(pr, pi, grid),
            "kl_divergence": kl_divergence(pr, pi, grid),
            "curves": {"grid": grid, "intra_generated": pg, "intra_reference": pr, "inter": pi},
        }
    return out


def report(generated_path, reference_path, reference_split: str = "all", max_pieces: int = MAX_PIECES,
           seed: int = 0) -> dict:
    gen, gen_skipped, gen_files = load_set(generated_path, max_pieces=max_pieces, seed=seed)
    ref, ref_skipped, ref_files = load_set(reference_path, reference_split, max_pieces=max_pieces, seed=seed)
    results = compare(gen, ref, seed=seed)
    return {"generated": {"path": str(generated_path), "pieces": len(gen), "files": gen_files, "skipped": gen_skipped},
            "reference": {"path": str(reference_path), "pieces": len(ref), "files": ref_files,
                          "skipped": ref_skipped},
            "sample": {"max_pieces": max_pieces, "max_pairs": MAX_PAIRS, "seed": seed},
            "features": results}


def as_json(rep: dict) -> dict:
    """The report without the plotting curves."""
    clean = {k: v for k, v in rep.items() if k != "features"}
    clean["features"] = {name: {k: v for k, v in f.items() if k != "curves"} for name, f in rep["features"].items()}
    return clean


def format_table(rep: dict) -> str:
    def count(part):
        files = part.get("files", part["pieces"])
        return f"{part['pieces']} pieces" + (f" (a sample of {files} files, --seed)" if files > rep["sample"]["max_pieces"]
                                             else "")

    lines = [f"generated: {count(rep['generated'])}, reference: {count(rep['reference'])}",
             f"{'feature':<24}{'generated':>12}{'reference':>12}{'overlap':>9}{'KL':>8}"]
    for name, f in rep["features"].items():
        gm, rm = f["generated_mean"], f["reference_mean"]
        g = f"{gm:.2f}" if isinstance(gm, float) else "(hist)"
        r = f"{rm:.2f}" if isinstance(rm, float) else "(hist)"
        lines.append(f"{name:<24}{g:>12}{r:>12}{f['overlap_area']:>9.2f}{f['kl_divergence']:>8.3f}")
    return "\n".join(lines)


def plot_report(rep: dict, path) -> None:
    from ..fileio import atomic_path
    from ..plots import _pyplot

    plt = _pyplot()
    names = list(rep["features"])
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), dpi=100)
    for ax, name in zip(axes.ravel(), names):
        f = rep["features"][name]
        c = f["curves"]
        ax.plot(c["grid"], c["intra_reference"], label="reference (intra)", color="#4c72b0")
        ax.plot(c["grid"], c["intra_generated"], label="generated (intra)", color="#dd8452")
        ax.plot(c["grid"], c["inter"], label="inter-set", color="#55a868", linestyle="--")
        ax.set_title(f"{name}\nOA {f['overlap_area']:.2f}  KL {f['kl_divergence']:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{rep['generated']['pieces']} generated vs {rep['reference']['pieces']} reference pieces "
                 "(distance distributions)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
