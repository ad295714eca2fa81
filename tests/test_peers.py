"""benchmarks/peers.py: the small GPT peer trains and scores, and its scores are causal.

The corpus is generated here (helpers.scale_song: simple scales and chords written by the tests).
"""
import hashlib
import importlib.util
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from melodylstm.midi import write_midi

from conftest import ROOT
from helpers import scale_song

pytest.importorskip("miditok")


def _peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


peers = _peers()
TINY = (peers.GPTSize("2x32", 2, 32, 2, 32, 8, 1e-2), peers.GPTSize("1x48", 1, 48, 4, 24, 8, 1e-2))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """melodylstm-like file results (.path, .notes, .content_hash) for 16 generated songs."""
    folder = tmp_path_factory.mktemp("peer_corpus")
    results = []
    for i in range(16):
        song = scale_song(100 + i, bars=12)
        path = folder / f"song{i}.mid"
        write_midi(song, path)
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        results.append(SimpleNamespace(path=str(path), notes=len(song.notes), content_hash=digest))
    return results[:13], results[13:]


def test_gpt_peer_trains_and_scores_better_than_untrained(files):
    train, val = files
    untrained = peers.gpt_bits(train, val, 0, sizes=TINY, steps=0)
    trained = peers.gpt_bits(train, val, 0, sizes=TINY, steps=80)
    assert np.isfinite(untrained["bits_per_note"]) and np.isfinite(trained["bits_per_note"])
    assert trained["bits_per_note"] < 0.7 * untrained["bits_per_note"]
    assert trained["size"] in {s.name for s in TINY} and set(trained["tried"]) == {s.name for s in TINY}
    assert trained["steps"] == 80
    # the held-out files are longer than either context: the sliding windows scored them whole
    seqs, _ = peers.tsd_tokens(val)
    assert min(len(s) for s in seqs) > 3 * max(s.context for s in TINY)


def test_gpt_schedule_ends_with_the_time_budget(files):
    seqs, vocab = peers.tsd_tokens(files[0])
    started = time.perf_counter()
    _, info = peers.train_gpt(seqs, vocab, TINY[0], minutes=0.02)
    assert 1.2 <= time.perf_counter() - started < 6 and info["steps"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_gpt_scores_are_causal(seed):
    """Changing (or dropping) the tokens after position t leaves the log-probabilities of the
    tokens up to t unchanged, across the sliding windows of a sequence much longer than the context."""
    rng = np.random.default_rng(seed)
    size = TINY[seed % 2]
    torch.manual_seed(seed)
    model = peers.make_gpt(50, size)
    seq = rng.integers(0, 50, int(rng.integers(5 * size.context, 8 * size.context)))
    lp = peers.causal_logprobs(model, seq, size.context)  # lp[i]: log p(seq[i + 1] | seq[:i + 1])
    assert lp.shape == (len(seq) - 1,) and np.all(lp < 0)
    for t in rng.integers(1, len(seq) - 2, 6):
        changed = seq.copy()
        changed[t + 1:] = (seq[t + 1:] + rng.integers(1, 50, len(seq) - t - 1)) % 50
        other = peers.causal_logprobs(model, changed, size.context)
        np.testing.assert_allclose(other[:t], lp[:t], rtol=0, atol=1e-6)
        assert other[t] != lp[t]  # the changed token itself is scored differently
        cut = peers.causal_logprobs(model, seq[:t + 1], size.context)
        np.testing.assert_allclose(cut, lp[:t], rtol=0, atol=1e-6)


def test_scoring_a_short_sequence_is_one_plain_forward():
    size = TINY[0]
    torch.manual_seed(0)
    model = peers.make_gpt(30, size).eval()
    seq = np.arange(size.context + 1) % 30
    lp = peers.causal_logprobs(model, seq, size.context)
    with torch.no_grad():
        direct = torch.log_softmax(model(torch.from_numpy(seq[None, :-1])).double(), -1)[0]
    np.testing.assert_allclose(lp, direct[torch.arange(size.context), torch.from_numpy(seq[1:])].numpy(), atol=1e-6)
