"""Checkpoints: one safetensors file holding weights, configs (JSON), training state and metadata.

safetensors stores raw tensors and a JSON header, so loading a checkpoint can never run code
(unlike pickle-based torch.save files, which are refused outright). Writes are atomic."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import ModelConfig
from .fileio import atomic_path
from .tokenizer import Tokenizer

FORMAT = "melodylstm-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).parent / "default" / "default.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line for the user."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    tokenizer: Tokenizer
    weights: dict  # name -> numpy array (fp16 or fp32 as stored)
    train_state: dict = field(default_factory=dict)
    train_tensors: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    path: str = ""

    def float_weights(self) -> dict:
        """fp32 numpy weights, the tied output layer filled in."""
        weights = {k: v.astype(np.float32) for k, v in self.weights.items()}
        if self.model_config.tie_weights:
            weights["head.weight"] = weights["embed.weight"]
        return weights

    def build_model(self, device="cpu"):
        import torch

        from .model import MelodyLSTM

        model = MelodyLSTM(self.model_config)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.float_weights().items()}, strict=True)
        return model.to(device)

    def train_tensors_torch(self) -> dict:
        import torch

        return {k: torch.from_numpy(v.copy()) for k, v in self.train_tensors.items()}


def optimizer_to_tensors(optimizer) -> tuple[dict, list]:
    """The optimizer's state as named tensors (stored beside the weights) and its param groups (JSON)."""
    import torch

    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def optimizer_from_tensors(optimizer, tensors: dict, param_groups: list) -> None:
    state = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def save_checkpoint(path, model, tokenizer: Tokenizer, train_state: dict | None = None,
                    train_tensors: dict | None = None, meta: dict | None = None, half: bool = False) -> None:
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    tensors = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_weights and name == "head.weight":
            continue  # shared with embed.weight; safetensors refuses aliased tensors
        tensor = tensor.detach().to("cpu")
        tensors[f"model.{name}"] = (tensor.half() if half and tensor.is_floating_point() else tensor).contiguous().clone()
    for name, tensor in (train_tensors or {}).items():
        tensors[f"train.{name}"] = tensor.detach().to("cpu").contiguous().clone()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict()),
        "tokenizer": tokenizer.to_json(),
        "train_state": json.dumps(train_state or {}),
        "meta": json.dumps({"melodylstm_version": __version__, **(meta or {})}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)



def load_checkpoint(path=None, with_train_state: bool = False) -> Checkpoint:
    """Load and validate a checkpoint (default: the bundled model). Raises CheckpointError."""
    from safetensors import safe_open

    path = Path(path) if path else DEFAULT_CHECKPOINT
    if path.is_dir():
        path = pick_from_folder(path)
    if not path.exists():
        hint = " (the bundled default model is missing from this install)" if path == DEFAULT_CHECKPOINT else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a melodylstm checkpoint")
            names = [k for k in fh.keys() if k.startswith("model.") or (with_train_state and k.startswith("train."))]
            tensors = {k: fh.get_tensor(k) for k in names}
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise CheckpointError(f"{path}: not a readable melodylstm checkpoint (damaged, truncated, "
                              f"or a pickle file, which is never loaded: {type(exc).__name__})") from None
    return _validate(path, metadata, tensors)


def _validate(path, metadata, tensors) -> Checkpoint:
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format {metadata.get('format_version')} is not supported "
                              f"by melodylstm {__version__} (expects {FORMAT_VERSION})")
    for name, text in metadata.items():
        if len(text) > MAX_METADATA_CHARS:
            raise CheckpointError(f"{path}: its {name[:40]!r} entry holds {len(text):,} characters; "
                                  f"at most {MAX_METADATA_CHARS:,}")
    try:
        model_config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        tokenizer = Tokenizer.from_json(metadata["tokenizer"])
        train_state = json.loads(metadata.get("train_state", "{}"))
        meta = json.loads(metadata.get("meta", "{}"))
        check_meta(meta, train_state)
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: invalid configuration ({text[:200]})") from None
    from .data import check_style_name

    for style in model_config.styles:  # printed by info and in every summary: one line each
        try:
            check_style_name(style, given=False)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    if model_config.vocab_size != len(tokenizer):
        raise CheckpointError(f"{path}: model vocabulary ({model_config.vocab_size}) does not match "
                              f"its tokenizer ({len(tokenizer)} tokens)")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model_config.weight_shapes()
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        names = ", ".join(sorted(missing | unexpected)[:3])
        raise CheckpointError(f"{path}: weights do not match the model config (missing or unexpected: {names})")
    for name, array in weights.items():
        if tuple(array.shape) != expected[name]:
            raise CheckpointError(f"{path}: weight {name} has shape {tuple(array.shape)}, "
                                  f"the model config needs {expected[name]}")
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: weight {name} contains NaN or infinite values")
    train_tensors = {k[len("train."):]: v for k, v in tensors.items() if k.startswith("train.")}
    return Checkpoint(model_config, tokenizer, weights, train_state, train_tensors, meta, str(path))


MAX_METADATA_CHARS = 8 << 20  # a few hundred styles' key counts fit in well under a megabyte
_NUMBER = (int, float)
# the meta fields that commands read, and the types they need (anything else is kept, unread)
META_TYPES = {"sources": list, "corpus": dict, "key_prior": dict, "val_nll": _NUMBER, "val_bits_per_note": _NUMBER,
              "val_fraction": _NUMBER, "step": _NUMBER, "epochs": _NUMBER, "elapsed_s": _NUMBER, "date": str,
              "melodylstm_version": str, "weights": str, "corpus_path": (str, list), "exported_from": str}


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def check_meta(meta, train_state) -> None:
    """The shapes that describe, evaluate, generate and resume rely on; TypeError/ValueError otherwise."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta is a JSON {_json_type(meta)}, not an object")
    if not isinstance(train_state, dict):
        raise TypeError(f"train_state is a JSON {_json_type(train_state)}, not an object")
    for name, kind in META_TYPES.items():
        value = meta.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise TypeError(f"meta field {name!r} is a JSON {_json_type(value)}")
    for item in meta.get("sources") or []:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and (item[1] is None or isinstance(item[1], str))):
            raise TypeError("meta field 'sources' must hold [folder, style] pairs")
    for style, counts in (meta.get("key_prior") or {}).items():
        if not (isinstance(counts, list) and len(counts) == 24
                and all(isinstance(c, _NUMBER) and 0 <= c < float("inf") for c in counts) and sum(counts) > 0):
            raise ValueError(f"meta field 'key_prior' must hold 24 key counts per style ({style[:40]!r} does not)")
    for name, value in (meta.get("corpus") or {}).items():
        if not isinstance(value, _NUMBER) or isinstance(value, bool):
            raise TypeError(f"meta field 'corpus' must hold numbers ({name[:40]!r} does not)")
    if not isinstance(train_state.get("train_config", {}), dict):
        raise TypeError("train_state field 'train_config' is not an object")


def pick_from_folder(folder: Path) -> Path:
    for name in ("best.safetensors", "last.safetensors"):
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(f"no best.safetensors or last.safetensors in {folder}")




def meta_table(ckpt, name: str) -> dict:
    """A per-style table from a checkpoint's metadata; a missing or damaged one counts as empty."""
    table = ckpt.meta.get(name)
    return table if isinstance(table, dict) else {}


def export_checkpoint(src, dst, half: bool = True, extra_meta: dict | None = None) -> Checkpoint:
    """A compact, inference-only copy: weights (fp16 by default), configs and metadata; no
    optimizer state. This is how the bundled default model is made."""
    from safetensors.numpy import save_file

    ckpt = load_checkpoint(src)
    tensors = {f"model.{k}": (v.astype(np.float16) if half else v.astype(np.float32))
               for k, v in ckpt.weights.items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "model_config": json.dumps(ckpt.model_config.to_dict()), "tokenizer": ckpt.tokenizer.to_json(),
                "train_state": "{}", "meta": json.dumps({**ckpt.meta, "exported_from": str(src),
                                                         "weights": "fp16" if half else "fp32", **(extra_meta or {})})}
    with atomic_path(dst) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return load_checkpoint(dst)


def describe(ckpt: Checkpoint) -> dict:
    """What a checkpoint is: model, controls and styles, corpus, training and validation figures."""
    c, meta = ckpt.model_config, ckpt.meta
    params = sum(int(np.prod(v.shape)) for v in ckpt.weights.values())
    return {
        "path": ckpt.path,
        "model": f"{c.layers}x{c.hidden} LSTM, embedding {c.embedding}, {params:,} parameters"
                 + (", tied weights" if c.tie_weights else ""),
        "controls": c.control_names,
        "causal_controls": c.causal_controls,
        "style_voices": meta.get("style_voices"),
        "styles": list(c.styles),
        "tokenizer": {"vocabulary": len(ckpt.tokenizer), "steps_per_quarter": ckpt.tokenizer.config.resolution,
                      "programs": ckpt.tokenizer.config.programs, "drums": ckpt.tokenizer.config.drums},
        "corpus": {"sources": meta.get("sources") or meta.get("corpus_path"), **(meta.get("corpus") or {})},
        "training": {k: meta.get(k) for k in ("step", "epochs", "elapsed_s", "date", "melodylstm_version") if k in meta},
        "validation": {"nats_per_token": meta.get("val_nll"), "bits_per_note": meta.get("val_bits_per_note")},
        "weights": meta.get("weights", "fp32"),
    }


def format_description(info: dict) -> str:
    corpus = info["corpus"]
    sources = corpus.get("sources")
    if isinstance(sources, list):
        sources = ", ".join(f"{name}={path}" if name else str(path) for path, name in sources)
    val = info["validation"]
    lines = [f"checkpoint  {info['path']}",
             f"model       {info['model']} ({info['weights']} weights)",
             f"controls    {', '.join(info['controls']) or 'none (an older checkpoint: --key works only with --strict-key)'}"
             + ((" (causal: read from the notes before each token)" if info["causal_controls"] else
                 " (older: key, chord and density are hidden in every likelihood figure)") if info["controls"] else ""),
             f"styles      {', '.join(info['styles']) or 'none'}" + (
                 " (voices: " + ", ".join(f"{k or '(no style)'} {v}" for k, v in info["style_voices"].items()) + ")"
                 if isinstance(info.get("style_voices"), dict) and info["style_voices"] else ""),
             f"tokens      {info['tokenizer']['vocabulary']} in the vocabulary, "
             f"{info['tokenizer']['steps_per_quarter']} steps per quarter note"]
    if sources or corpus.get("files_used"):
        lines.append(f"corpus      {sources or '?'}: {corpus.get('files_used', '?')} files, "
                     f"{corpus.get('notes', 0):,} notes, {corpus.get('tokens', 0):,} tokens")
    train = info["training"]
    if train:
        lines.append("training    " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in train.items()))
    if val["nats_per_token"] is not None:
        bits = f", {val['bits_per_note']:.2f} bits/note" if val.get("bits_per_note") else ""
        lines.append(f"validation  {val['nats_per_token']:.4f} nats/token{bits} (training windows; "
                     f"`melodylstm evaluate` gives whole-piece figures)")
    return "\n".join(lines)
