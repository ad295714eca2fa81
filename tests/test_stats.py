import json

import numpy as np
import pytest

from melodylstm.metrics import features as stats
from melodylstm.midi import Song, write_midi

from helpers import cli, scale_song


def notes(rows):
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


C_MAJOR = notes([[i * 12, 12, p, 80, 0] for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])])


def test_c_major_scale_features():
    assert stats.scale_consistency(C_MAJOR) == 1.0
    assert stats.pitch_range(C_MAJOR) == 12
    assert stats.used_pitches(C_MAJOR) == 8
    assert stats.average_pitch_interval(C_MAJOR) == pytest.approx(12 / 7)
    assert stats.polyphony(C_MAJOR) == 1.0
    assert stats.empty_beat_rate(C_MAJOR, 12) == 0.0
    hist = stats.pitch_class_histogram(C_MAJOR)
    assert hist[0] == pytest.approx(2 / 8) and hist[1] == 0
    assert stats.note_length_histogram(C_MAJOR, 12)[list(stats.LENGTH_CLASSES).index(1)] == 1.0


def test_chromatic_cluster_and_gaps():
    chromatic = notes([[0, 48, 60 + i, 80, 0] for i in range(12)])
    assert stats.scale_consistency(chromatic) == pytest.approx(7 / 12)
    assert stats.polyphony(chromatic) == 12
    gappy = notes([[0, 12, 60, 80, 0], [36, 12, 62, 80, 0]])  # beats 1 and 2 have no onset
    assert stats.empty_beat_rate(gappy, 12) == pytest.approx(0.5)


def test_identical_sets_overlap_almost_fully_and_different_sets_do_not():
    songs = [scale_song(i, bars=4) for i in range(12)]
    feats = [stats.piece_features(s) for s in songs]
    same = stats.compare(feats, feats)
    assert all(f["overlap_area"] > 0.8 for f in same.values())
    chromatic = [stats.piece_features(Song(notes([[i * 6, 6, 40 + (i * 7 + k) % 40, 80, 0] for i in range(64)]), 12))
                 for k in range(12)]
    far = stats.compare(chromatic, feats)
    assert far["scale_consistency"]["overlap_area"] < 0.3
    assert far["pitch_count"]["overlap_area"] < 0.3


def test_kde_integrates_to_one_and_oa_of_identical_curves_is_one():
    grid = np.linspace(0, 10, 500)
    p = stats.kde(np.random.default_rng(0).normal(5, 1, 200), grid)
    assert float(((p[1:] + p[:-1]) / 2 * np.diff(grid)).sum()) == pytest.approx(1.0)
    assert stats.overlap_area(p, p, grid) == pytest.approx(1.0)
    assert stats.kl_divergence(p, p, grid) == pytest.approx(0.0, abs=1e-9)


def test_stats_command_writes_a_report(tmp_path):
    for name, seeds in (("gen", range(4)), ("ref", range(10, 16))):
        (tmp_path / name).mkdir()
        for i in seeds:
            write_midi(scale_song(i, bars=4), tmp_path / name / f"{i}.mid")
    out = tmp_path / "report.png"
    result = cli("stats", str(tmp_path / "gen"), str(tmp_path / "ref"), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["generated"]["pieces"] == 4 and set(data["features"]) == set(stats.FEATURES) | {"bar_repetition"}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_bar_repetition_counts_exact_and_transposed_repeats():
    from melodylstm.midi import TempoMap

    motif = [(0, 12, 60), (12, 12, 64), (24, 24, 67)]
    bars = [0, 0, 5, 9]  # bar 2 repeats bar 1, bar 3 is bar 1 a fourth up; bar 4 differs in rhythm
    notes = [(b * 48 + o, d, p + t, 80, 0) for b, t in enumerate(bars[:3]) for o, d, p in motif]
    notes += [(3 * 48, 48, 69, 80, 0)]
    value = stats.bar_repetition(np.array(notes), TempoMap(resolution=12))
    assert value == pytest.approx(2 / 4)


def synthetic_features(n: int, seed: int) -> list[dict]:
    """n feature rows shaped like piece_features' (histograms and scalars), random values."""
    template = stats.piece_features(scale_song(0, bars=4))
    rng = np.random.default_rng(seed)
    return [{name: rng.random(value.shape) for name, value in template.items()} for _ in range(n)]


def test_stats_memory_stays_flat_on_a_large_reference():
    """10,000 reference pieces: all pairs would be 50 million distances per feature (the KDE of
    4 million took 24 GB); sampled pairs and a chunked KDE keep the peak far below 200 MB."""
    import tracemalloc

    generated, reference = synthetic_features(40, 1), synthetic_features(10_000, 2)
    tracemalloc.start()
    try:
        result = stats.compare(generated, reference)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    assert 0 <= result["polyphony"]["overlap_area"] <= 1.0001
    # same seed, same sample; the sample is a fair one (random sets overlap almost fully)
    again = stats.compare(generated, reference)
    assert again["pitch_range"]["overlap_area"] == result["pitch_range"]["overlap_area"] > 0.8


def test_pairs_are_all_pairs_up_to_the_bound_then_a_seeded_sample_without_self_pairs():
    i, j = stats.pair_indices(5)
    assert sorted(zip(i.tolist(), j.tolist())) == [(a, b) for a in range(5) for b in range(a + 1, 5)]
    i, j = stats.pair_indices(3, 4)
    assert len(i) == 12 and set(zip(i.tolist(), j.tolist())) == {(a, b) for a in range(3) for b in range(4)}
    i, j = stats.pair_indices(1000, max_pairs=5000, rng=np.random.default_rng(7))
    assert len(i) == 5000 and not (i == j).any() and i.max() == 999 and j.max() == 999
    i2, _ = stats.pair_indices(1000, max_pairs=5000, rng=np.random.default_rng(7))
    assert (i == i2).all()


def test_stats_samples_a_large_folder_with_a_seed(tmp_path):
    for i in range(12):
        write_midi(scale_song(i, bars=2), tmp_path / f"{i:02}.mid")
    a, _, found = stats.load_set(tmp_path, max_pieces=5, seed=3)
    b, _, _ = stats.load_set(tmp_path, max_pieces=5, seed=3)
    c, _, _ = stats.load_set(tmp_path, max_pieces=5, seed=4)
    assert found == 12 and len(a) == 5
    key = lambda feats: [f["pitch_class_histogram"].tolist() for f in feats]  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
