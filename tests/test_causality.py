"""Every likelihood figure is causal: changing the notes after a moment t never changes what the
model predicted up to t — through `evaluate`'s path (files -> tokens -> controls -> the model),
training validation, and the continuation figure, for a model with causal controls and for an
older one (whose leaky inputs must be hidden). The same check fed the older, leaky inputs
(the current beat's chord, the whole piece's key) sees the change, so it can tell a leak."""
from __future__ import annotations

import numpy as np
import torch

from melodylstm import controls as ctl
from melodylstm.config import CONTROL_DIMS, ModelConfig
from melodylstm.metrics.continuations import continuation_losses, cut_piece
from melodylstm.data import tokenize_files
from melodylstm.metrics.likelihood import hidden_controls, model_controls, token_log_probs
from melodylstm.midi import DURATION, ONSET, PITCH, Song, write_midi
from melodylstm.model import MelodyLSTM
from melodylstm.tokenizer import Tokenizer
from melodylstm.train import TrainConfig, window_losses

from helpers import scale_song

TOK = Tokenizer()
RES = TOK.config.resolution


def model_with_controls(seed: int = 0, causal: bool = True) -> MelodyLSTM:
    """An untrained model reading every control: random weights respond to every input."""
    torch.manual_seed(seed)
    controls = ctl.model_controls(RES, ["a", "b"], CONTROL_DIMS)
    return MelodyLSTM(ModelConfig(len(TOK), 16, 32, 2, 0.0, controls=controls, styles=("a", "b"),
                                  causal_controls=causal)).eval()


def changed_after(song: Song, t: int, rng) -> Song:
    """The same song with every note starting at or after step t moved, lengthened and thinned;
    a run of new high notes added after t as well."""
    notes = song.notes.astype(np.int64).copy()
    later = notes[:, ONSET] >= t
    notes[later, PITCH] = np.clip(notes[later, PITCH] + rng.integers(-7, 8, later.sum()), 21, 108)
    notes[later, DURATION] = np.maximum(1, notes[later, DURATION] * 2 - 1)
    keep = ~later | (rng.random(len(notes)) < 0.7)
    extra = np.array([(t + 5 * RES + 3 * i, 3, 90 + i % 5, 100, 0) for i in range(24)])
    return Song(np.concatenate([notes[keep], extra]), song.resolution, song.tempos, song.time_signatures, song.names)


def file_inputs(song: Song, folder, name: str):
    """Tokens and stored controls of one file, as `evaluate` gets them from the data path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_midi(song, folder / name)
    (r,) = tokenize_files([folder / name], TOK, None, jobs=1)
    assert not r.reason, r.reason
    return r.tokens.astype(np.int64), r.controls


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.nonzero(a[:n] != b[:n])[0]
    return int(differ[0]) if len(differ) else n


def pieces(n: int):
    """(seed, song, t, changed song) with t a random step after the first bar."""
    rng = np.random.default_rng(7)
    for seed in range(n):
        song = scale_song(100 + seed, bars=6)
        t = int(rng.integers(4 * RES, 5 * 4 * RES))
        yield seed, song, t, changed_after(song, t, rng)


def evaluate_path_leaks(model, tmp_path, leaky_inputs: bool = False) -> list[bool]:
    """For each piece: do the log-probabilities up to the first changed token differ?
    leaky_inputs: feed the older inputs computed from the whole beat and piece instead."""
    leaks = []
    for seed, song, t, other in pieces(6):
        (ta, ca), (tb, cb) = (file_inputs(s, tmp_path / f"{seed}{tag}", "x.mid") for s, tag in ((song, "a"), (other, "b")))
        if leaky_inputs:
            ca, cb = (ctl.controls_for(s, tokens, TOK, causal=False) for s, tokens in ((song, ta), (other, tb)))
        prefix = common_prefix(ta, tb)
        assert 2 < prefix < min(len(ta), len(tb)), "the change must fall inside both pieces"
        hide = hidden_controls(model.config) if not leaky_inputs else ()  # what evaluate_folder hides
        la = token_log_probs(model, ta, model_controls(model.config, ca, 1, hide))
        lb = token_log_probs(model, tb, model_controls(model.config, cb, 1, hide))
        # position k predicts token k + 1: the first prefix positions see only shared tokens
        leaks.append(not torch.allclose(la[:prefix], lb[:prefix], atol=1e-5))
    return leaks


def test_evaluate_is_causal_and_the_leaky_inputs_are_not(tmp_path):
    assert not any(evaluate_path_leaks(model_with_controls(), tmp_path / "causal"))
    assert not any(evaluate_path_leaks(model_with_controls(causal=False), tmp_path / "older"))
    assert hidden_controls(model_with_controls(causal=False).config) == {"key", "chord", "density"}
    assert any(evaluate_path_leaks(model_with_controls(), tmp_path / "leaky", leaky_inputs=True))  # sees a leak


def test_training_validation_is_causal(tmp_path, tiny_corpus):
    from melodylstm.train import Run

    cfg = TrainConfig(out=str(tmp_path / "run"), batch_size=4, seq_len=64, max_steps=1)
    run = Run(tiny_corpus, TOK, {"embedding": 16, "hidden": 32, "layers": 1}, cfg,
              data_options={"cache_dir": str(tmp_path / "cache"), "jobs": 1}, log=lambda m: None, progress=False)
    model = run.model.eval()
    assert run.model_config.control_names  # the run's model reads controls
    columns = ctl.columns_of(run.model_config)
    for seed, song, t, other in pieces(4):
        (ta, ca), (tb, cb) = (file_inputs(s, tmp_path / f"{seed}{tag}", "x.mid") for s, tag in ((song, "a"), (other, "b")))
        prefix = common_prefix(ta, tb)
        length = min(len(ta), len(tb), prefix + 16)
        windows, stored = [], []
        for tokens, controls in ((ta, ca), (tb, cb)):
            windows.append(tokens[:length])
            stored.append(np.concatenate([controls[:length], np.zeros((length, 1), np.int64)], axis=1)[:, columns])
        run.val_windows, run.val_controls = np.stack(windows), np.stack(stored)
        losses = window_losses(model, run.val_windows, run.device, run.autocast, controls=run.validation_controls())
        assert torch.allclose(losses[0, :prefix - 1], losses[1, :prefix - 1], atol=1e-5), (seed, t)
        if seed == 0:  # the older, leaky inputs in the same windows: the leak shows
            leaky = np.stack([ctl.controls_for(s, tokens[:length], TOK, causal=False)
                              for s, tokens in ((song, ta), (other, tb))])
            leaky = np.concatenate([leaky, np.zeros(leaky.shape[:2] + (1,), np.int64)], axis=2)[..., columns]
            given = window_losses(model, run.val_windows, run.device, run.autocast, controls=leaky.astype(np.int64))
            leaked = not torch.allclose(given[0, :prefix - 1], given[1, :prefix - 1], atol=1e-5)
    assert run.model_config.causal_controls and leaked


def test_continuation_figure_is_causal():
    """Each token's term of the continuation's bits/note stays the same when the music after
    that token changes; the later terms do change."""
    model = model_with_controls(1)
    song = scale_song(3, bars=8)
    cut = cut_piece(song, 4, 4, TOK)
    t = cut.cut + 2 * 4 * RES
    later = changed_after(Song(cut.real, RES, song.tempos, song.time_signatures), t, np.random.default_rng(0)).notes
    later = later[later[:, ONSET] < cut.end]
    head = cut.real[cut.real[:, ONSET] < t]  # the real continuation cut short before the change
    terms = [continuation_losses(model, TOK, cut.primer, real) for real in (cut.real, later, head)]
    shared = len(terms[2]) - 1  # the head's last term predicts its EOS-free end: compare before it
    assert shared > 4
    assert np.allclose(terms[0][:shared], terms[1][:shared], atol=1e-5)
    assert np.allclose(terms[0][:shared], terms[2][:shared], atol=1e-5)
    assert not np.allclose(terms[0][shared:shared + 20], terms[1][shared:shared + 20], atol=1e-5)
