"""The fast control estimators give exactly the values of the loops they replaced
(tests/controls_reference.py), on real files and on the corner cases of each rule."""
from pathlib import Path

import numpy as np
import pytest

import controls_reference as ref
from melodylstm import controls as ctl
from melodylstm import theory
from melodylstm.midi import MidiError, Song, read_midi
from melodylstm.tokenizer import Tokenizer, token_times

TOK = Tokenizer()
ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/midi")


def same_controls(song):
    kept, _ = TOK.normalize(song)
    tokens = TOK.encode_normalized(kept)
    fast, slow = ctl.controls_for(kept, tokens, TOK, causal=False), ref.controls_for(kept, tokens, TOK)
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
    grid, res = kept.tempo_map, TOK.config.resolution
    for n_beats in (1, 3, kept.end // res + 2):  # also cut short, as tests and generate call it
        assert np.array_equal(ctl.estimate_chords(kept.notes, n_beats, res), ref.estimate_chords(kept.notes, n_beats, res))
    assert theory.estimate_key_index(kept.notes) == ref.estimate_key_index(kept.notes)
    n_bars = grid.bar_at_or_after(kept.end) + 2
    assert np.array_equal(ctl.bar_densities(kept.notes, grid, n_bars, res), ref.bar_densities(kept.notes, grid, n_bars, res))


def midi_files(folder, limit=None):
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    return files[:limit] if limit else files


def readable(path):
    try:
        song = read_midi(path, TOK.config.resolution)
    except MidiError:
        return None
    return song if len(TOK.normalize(song)[0].notes) else None


def test_identical_on_every_bundled_chorale():
    files = midi_files(ROOT / "datasets" / "bach_chorales")
    assert len(files) > 100
    for path in files:
        same_controls(read_midi(path, TOK.config.resolution))


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared MIDI folder on this machine")
def test_identical_on_shared_real_world_files():
    checked = 0
    for path in midi_files(SHARED):
        song = readable(path)
        if song is not None:
            same_controls(song)
            checked += 1
    assert checked > 100


def test_identical_on_metre_changes_silences_and_drums():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 300))
        onset = np.sort(rng.integers(0, 2000, n))
        notes = np.stack([onset, rng.integers(1, 200, n), rng.integers(21, 108, n), rng.integers(1, 127, n),
                          rng.choice([0, 0, 0, 40, 128], n)], axis=1)
        sigs = [(0, 4, 4)] if trial % 3 == 0 else [(0, 3, 4), (int(rng.integers(1, 900)), 7, 8), (1200, 5, 4)]
        same_controls(Song(notes, 12, [(0, 500000)], sigs))


def test_token_times_when_shifts_run_past_bar_lines():
    """Hand-made tokens whose shifts cross bar lines: the decoder's catch-up rule."""
    shift = lambda k: TOK.shift0 + k - 1  # noqa: E731
    note = [TOK.pitch_token(60), TOK.velocity0 + 3, TOK.duration0 + 5]
    tokens = [TOK.bos, TOK.bar, *note, shift(48), shift(30), TOK.bar, *note, TOK.bar, shift(12), TOK.bar, *note, TOK.eos]
    for sigs in ([(0, 4, 4)], [(0, 3, 4), (40, 2, 4), (100, 4, 4)]):
        grid = Song(np.zeros((0, 5)), 12, [(0, 500000)], sigs).tempo_map
        assert np.array_equal(token_times(tokens, TOK, grid), ref.token_times(tokens, TOK, grid))
    assert token_times([], TOK, grid).tolist() == []


def test_key_ties_and_flat_histograms():
    flat = np.array([(i * 12, 12, 60 + i, 80, 0) for i in range(12)])  # every pitch class alike: no correlation
    assert theory.estimate_key_index(flat) == ref.estimate_key_index(flat) == theory.key_index(0, "major")
    for pcs in ([0], [0, 7], [0, 4, 7], [2, 9], [0, 6]):
        notes = np.array([(i * 12, 12, 60 + p, 80, 0) for i, p in enumerate(pcs)])
        assert theory.estimate_key_index(notes) == ref.estimate_key_index(notes)
    assert theory.estimate_key_index(np.array([(0, 12, 36, 80, 128)])) == theory.KEY_UNKNOWN
