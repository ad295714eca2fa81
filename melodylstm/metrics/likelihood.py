"""`melodylstm evaluate`: how likely is a folder of MIDI under a model, and how much better is
that than a smoothed n-gram model on the same tokens.

Each file runs through the LSTM from BOS to EOS with the state carried the whole way (no
context limit). Bits per note and bits per second do not depend on the tokenization, so they
compare models with different tokenizers.

The figure is causal: the model is never told anything computed from the notes it predicts or
later ones. A model with causal controls reads key, chord and density from the notes before
each token (controls.py); for a checkpoint from before them, those three are hidden.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import controls as ctl
from ..data import default_cache_dir, find_midi_files, is_validation, style_of, tokenize_files
from .ngram import NGramModel

LN2 = math.log(2)


def model_controls(config, file_controls: np.ndarray | None, style: int | None, hide=None) -> np.ndarray | None:
    """The control inputs a model reads for one file: (T, C) int64, the ones in `hide` set to
    unknown (None: what `hidden_controls` hides, so the inputs are causal)."""
    if not config.controls or file_controls is None:
        return None
    unknown_style = len(config.styles)
    full = np.concatenate([file_controls.astype(np.int64),
                           np.full((len(file_controls), 1), unknown_style if style is None else style)], axis=1)
    return ctl.causal(full[:, ctl.columns_of(config)], config, hidden_controls(config) if hide is None else hide)


def hidden_controls(config, hide=()) -> set:
    """The controls a figure hides: `hide`, and for a model from before causal controls the ones
    it was trained to read from the notes being predicted (key, chord, density)."""
    leaky = set() if config.causal_controls else set(ctl.FROM_FUTURE_NOTES) & set(config.control_names)
    return set(hide) | leaky


def token_log_probs(model, tokens: np.ndarray, controls: np.ndarray | None = None, chunk: int = 2048):
    """(T - 1, vocab) float32 tensor: log-probabilities of the token after each position of one
    sequence, the LSTM state carried across chunks."""
    import torch

    out, state = [], None
    x = torch.from_numpy(tokens.astype(np.int64))[None]
    c = None if controls is None else torch.from_numpy(controls)[None]
    with torch.inference_mode():
        for start in range(0, len(tokens) - 1, chunk):
            inputs = x[:, start: min(start + chunk, len(tokens) - 1)]
            ctl_in = None if c is None else c[:, start: start + inputs.shape[1]]
            logits, state = model(inputs, state, ctl_in)
            out.append(torch.log_softmax(logits[0].float(), dim=-1))
    return torch.cat(out) if out else torch.zeros((0, model.config.vocab_size))


def lstm_file_nll(model, tokens: np.ndarray, controls: np.ndarray | None = None, chunk: int = 2048) -> tuple[float, int, int]:
    """(total nats, predicted tokens, correct argmax predictions) for one token sequence."""
    import torch

    log_probs = token_log_probs(model, tokens, controls, chunk)
    targets = torch.from_numpy(tokens[1:].astype(np.int64))
    total = -float(log_probs.gather(1, targets[:, None]).sum())
    correct = int((log_probs.argmax(-1) == targets).sum())
    return total, len(tokens) - 1, correct


def select_split(results, split: str, val_fraction: float):
    if split == "all":
        return results
    want_val = split == "val"
    return [r for r in results if is_validation(r.content_hash, val_fraction) == want_val]


def checkpoint_val_fraction(checkpoint) -> float:
    """The share of its corpus a checkpoint held out (for --split val / train)."""
    return checkpoint.train_state.get("train_config", {}).get("val_fraction") or checkpoint.meta.get("val_fraction", 0.1)


def figures(nats: float, tokens: int, notes: int, seconds: float, correct: int | None = None) -> dict:
    out = {"nats_per_token": nats / tokens, "perplexity": math.exp(nats / tokens),
           "bits_per_note": nats / LN2 / notes if notes else None,
           "bits_per_second": nats / LN2 / seconds if seconds else None}
    if correct is not None:
        out["accuracy"] = correct / tokens
    return out


def file_style(checkpoint, folder, path, style: str | None) -> int | None:
    """Style id for a file: the given one, else the style its folder had in training (a
    NAME=FOLDER source, or the first-level subfolder), else unknown (None)."""
    styles = list(checkpoint.model_config.styles)
    if style is not None:
        if style not in styles:
            raise ValueError(f"unknown style {style!r}: this model knows {', '.join(styles) or 'no styles'}")
        return styles.index(style)
    for source, name in checkpoint.meta.get("sources", []):
        root = resolve_corpus(source)
        if name and root is not None and Path(path).resolve().is_relative_to(root.resolve()):
            return styles.index(name) if name in styles else None
    name = style_of(Path(path), Path(folder), None)
    return styles.index(name) if name in styles else None


def evaluate_folder(checkpoint, folder, split: str = "all", baseline_train=None, order: int = 5,
                    progress: bool = False, jobs: int = 0, style: str | None = None, hide=()) -> dict:
    """Figures for the LSTM and an n-gram baseline on the same files.

    Causal: a checkpoint from before causal controls gets key, chord and density hidden
    (besides `hide`).

    split: 'val' / 'train' keep only the files the checkpoint's content-hash split put there
    (use it when FOLDER is the training corpus); 'all' takes every file.
    baseline_train: folder the n-gram is fitted on (default: the training corpus recorded in the
    checkpoint, its training split only)."""
    from tqdm import tqdm

    tok = checkpoint.tokenizer
    val_fraction = checkpoint_val_fraction(checkpoint)
    cache = str(default_cache_dir())
    files, skipped_entries = find_midi_files(folder)
    results = tokenize_files(files, tok, cache, jobs, progress)
    skipped = list(skipped_entries) + [{"path": r.path, "reason": r.reason} for r in results if r.reason]
    used = select_split([r for r in results if not r.reason], split, val_fraction)
    if not used:
        raise ValueError(f"no usable MIDI file in {folder}" + (f" in the {split} split" if split != "all" else ""))

    model = checkpoint.build_model().eval()
    nats = correct = count = 0
    unknown = set(hide) - set(checkpoint.model_config.control_names)
    if unknown:
        raise ValueError(f"--hide {', '.join(sorted(unknown))}: this model's controls are "
                         f"{', '.join(checkpoint.model_config.control_names) or 'none'}")
    hidden = hidden_controls(checkpoint.model_config, hide)
    for r in tqdm(used, disable=not progress, unit="file", leave=False):
        controls = model_controls(checkpoint.model_config, r.controls, file_style(checkpoint, folder, r.path, style), hidden)
        n, c, k = lstm_file_nll(model, r.tokens, controls)
        nats, count, correct = nats + n, count + c, correct + k
    notes = sum(r.notes for r in used)
    seconds = sum(r.seconds for r in used)
    report = {"files": len(used), "files_skipped": skipped, "tokens": count, "notes": notes, "seconds": seconds,
              "lstm": figures(nats, count, notes, seconds, correct)}

    report["hidden_controls"] = sorted(hidden)
    recorded = [p for p, _ in checkpoint.meta.get("sources", [])] or [checkpoint.meta.get("corpus_path")]
    train_folders = [baseline_train] if baseline_train else [f for f in map(resolve_corpus, recorded) if f]
    if train_folders:
        train_files = [f for folder in train_folders for f in find_midi_files(folder)[0]]
        train_results = [r for r in tokenize_files(train_files, tok, cache, jobs) if not r.reason]
        if not baseline_train:  # the checkpoint's own corpus: fit on its training split only
            train_results = select_split(train_results, "train", val_fraction)
        held = {r.content_hash for r in used}
        fit = [r.tokens for r in train_results if r.content_hash not in held]  # never the files it scores
        if fit:
            ngram = NGramModel(len(tok), order).fit(fit)
            n_nats, n_count = ngram.nll([r.tokens for r in used])
            report["ngram"] = {"order": order, "train_files": len(fit), **figures(n_nats, n_count, notes, seconds)}
        else:  # fitted on nothing it would score the uniform distribution (perplexity = vocabulary size)
            report["ngram"] = None
            report["note"] = ("no n-gram baseline: " + (
                f"every one of its {len(train_results)} training files is among the files evaluated; "
                "use --split val (the held-out files) or --baseline-train DIR" if train_results else
                "no usable MIDI file to fit it on; pass --baseline-train DIR"))
    else:
        report["ngram"] = None
        report["note"] = "no n-gram baseline: pass --baseline-train DIR (the checkpoint records no corpus folder here)"
    return report


def resolve_corpus(path):
    """A recorded corpus folder, as given or relative to the project (for the bundled corpus,
    whichever folder the command runs in)."""
    from ..data import BUNDLED_DATASETS

    if not path or not isinstance(path, str):
        return None
    for candidate in (Path(path), BUNDLED_DATASETS.parent / path):
        if candidate.is_dir():
            return candidate
    return None


def format_report(report: dict) -> str:
    rows = [("LSTM (causal)", report["lstm"])]
    if report.get("ngram"):
        rows.append((f"{report['ngram']['order']}-gram (Kneser-Ney)", report["ngram"]))
    lines = [f"{report['files']} files, {report['notes']:,} notes, {report['tokens']:,} tokens, "
             f"{report['seconds'] / 60:.1f} minutes ({len(report['files_skipped'])} skipped)",
             f"{'model':<24}{'nats/token':>11}{'perplexity':>11}{'bits/note':>11}{'bits/s':>9}{'accuracy':>10}"]
    for name, f in rows:
        acc = f"{f['accuracy']:.1%}" if "accuracy" in f else "-"
        lines.append(f"{name:<24}{f['nats_per_token']:>11.4f}{f['perplexity']:>11.3f}{f['bits_per_note']:>11.3f}"
                     f"{f['bits_per_second']:>9.2f}{acc:>10}")
    if report.get("hidden_controls"):
        lines.append(f"controls hidden from the model: {', '.join(report['hidden_controls'])}")
    if report.get("note"):
        lines.append(report["note"])
    return "\n".join(lines)
