import json

import numpy as np
import pytest

from melodylstm.checkpoint import load_checkpoint, save_checkpoint
from melodylstm.config import ModelConfig
from melodylstm.metrics.likelihood import evaluate_folder
from melodylstm.model import MelodyLSTM
from melodylstm.midi import write_midi
from melodylstm.metrics.ngram import NGramModel
from melodylstm.tokenizer import Tokenizer

from helpers import cli, scale_song

TOK = Tokenizer()


def sequences(n=20):
    return [TOK.encode(scale_song(i, bars=4)) for i in range(n)]


def test_ngram_probabilities_sum_to_one():
    model = NGramModel(len(TOK), 4).fit(sequences())
    seq = sequences(1)[0][:15].astype(np.int64)
    total = 0.0
    for w in range(len(TOK)):
        seq[-1] = w
        total += np.exp(model.token_log_probs(seq)[-1])
    assert total == pytest.approx(1.0, abs=1e-9)


def test_ngram_is_better_on_its_training_text_than_on_shuffled_text():
    train = sequences()
    model = NGramModel(len(TOK), 4).fit(train)
    rng = np.random.default_rng(0)
    shuffled = [np.concatenate([s[:1], rng.permutation(s[1:-1]), s[-1:]]) for s in train]
    assert model.nats_per_token(train) < model.nats_per_token(shuffled) - 1.0
    # and higher orders fit their own text better
    assert NGramModel(len(TOK), 5).fit(train).nats_per_token(train) < NGramModel(len(TOK), 2).fit(train).nats_per_token(train)


def test_unigram_of_uniform_text_is_log_vocab():
    seq = np.arange(len(TOK)).repeat(3)
    model = NGramModel(len(TOK), 1).fit([seq])
    assert model.nats_per_token([seq]) == pytest.approx(np.log(len(TOK)), rel=0.02)


def test_evaluate_reports_lstm_and_baseline(tiny_corpus, tmp_path):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, MelodyLSTM(ModelConfig(len(TOK), 8, 16, 1, 0.0)), TOK, meta={"corpus_path": str(tiny_corpus)})
    other = tmp_path / "other"  # the baseline is fitted on other pieces of the same kind
    other.mkdir()
    for i in range(100, 112):
        write_midi(scale_song(i), other / f"{i}.mid")
    report = evaluate_folder(load_checkpoint(path), tiny_corpus, split="all", baseline_train=other)
    assert report["ngram"]["train_files"] == 12
    lstm = report["lstm"]
    # an untrained model is close to uniform over the vocabulary
    assert lstm["nats_per_token"] == pytest.approx(np.log(len(TOK)), rel=0.1)
    assert lstm["perplexity"] == pytest.approx(np.exp(lstm["nats_per_token"]))
    assert lstm["bits_per_note"] == pytest.approx(lstm["nats_per_token"] * report["tokens"] / report["notes"] / np.log(2))
    assert report["ngram"]["nats_per_token"] < lstm["nats_per_token"]
    assert any(s["reason"] for s in report["files_skipped"])  # the broken files are reported, not fatal
    out = cli("-q", "evaluate", str(tiny_corpus), "-c", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["lstm"]) >= {"nats_per_token", "bits_per_note", "bits_per_second", "perplexity", "accuracy"}


def test_evaluate_never_reports_a_baseline_fitted_on_nothing(tiny_corpus, tmp_path):
    """The training corpus with --split all: every training file is evaluated, so none is left to
    fit the n-gram on (it would score the uniform distribution, perplexity = vocabulary size)."""
    import torch

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, MelodyLSTM(ModelConfig(len(TOK), 8, 16, 1, 0.0)), TOK, meta={"corpus_path": str(tiny_corpus)})
    report = evaluate_folder(load_checkpoint(path), tiny_corpus, split="all")
    assert report["ngram"] is None and "training files is among the files evaluated" in report["note"]
    held_out = evaluate_folder(load_checkpoint(path), tiny_corpus, split="val")
    assert held_out["ngram"]["train_files"] == 12 - held_out["files"] > 0  # every training-split file
    assert held_out["ngram"]["perplexity"] < len(TOK) / 2  # fitted on real training files
    out = cli("-q", "evaluate", str(tiny_corpus), "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert "Kneser-Ney" not in out.stdout  # no baseline row
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"no n-gram baseline: every one of its {12 - held_out['files']} training files"), last


def test_the_default_models_corpus_is_found_from_any_folder(tmp_path, monkeypatch):
    """The default model records datasets/bach_chorales relative to the project; `evaluate` run
    from elsewhere fitted no n-gram baseline (the fallback looked inside the package)."""
    from melodylstm.data import BUNDLED_DATASETS
    from melodylstm.metrics.likelihood import resolve_corpus

    monkeypatch.chdir(tmp_path)
    recorded = [path for path, _ in load_checkpoint().meta["sources"]]
    assert [resolve_corpus(p) for p in recorded] == [BUNDLED_DATASETS / "bach_chorales", BUNDLED_DATASETS / "tunes"]
    assert resolve_corpus("datasets/nothing-here") is None
