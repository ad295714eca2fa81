"""Training: `melodylstm train FOLDER`.

A run is planned by a budget (steps, time, or both: whichever binds first), not by epochs: the
learning rate warms up, then decays on a cosine that ends exactly when the budget ends, and
validation runs a fixed number of times per budget (early stopping counts evaluations). A run the
recipe left unregularised that stops improving is not stopped the first time: it goes back to its
best weights and goes on with dropout and transposition (the corpus was memorised sooner than its
size predicted), so the schedule still ends with the budget.
Data order and dropout noise are pure functions of (seed, rank, step), so a resumed run repeats
exactly what an uninterrupted one would do, with no random state to save. Multi-GPU and
multi-node runs use torchrun + DistributedDataParallel."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from . import controls as ctl
from .config import CONTROL_DIMS
from .data import WindowSampler, load_corpus, parse_sources, validation_index
from .evaluate import hidden_controls
from .fileio import atomic_write_bytes, write_error
from .config import ModelConfig
from .model import MelodyLSTM
from .recipe import Size, minutes, recipe_for, regularisation
from .tokenizer import PAD, Tokenizer


@dataclass
class TrainConfig:
    out: str
    max_steps: int = 0  # budget in steps (0: none)
    max_time: float = 0.0  # budget in seconds (0: none); with neither, the recipe's default steps
    epochs: float = 0.0  # another way to give a step budget: this many passes over the training tokens
    batch_size: int | None = None  # None: the recipe's value for this corpus (recipe.py)
    seq_len: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: int = 100  # steps of linear warm-up (at most a tenth of a step budget)
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    transpose: int | None = None  # augmentation: random transposition within +-N semitones
    transpose_share: float | None = None  # of the windows (the others keep the corpus's own keys)
    val_fraction: float = 0.1
    controls: bool = True  # learn the control inputs (key, chord, density, position, style)
    style: str | None = None  # the style of every file (default: first-level subfolder names)
    evals: int = 20  # validations per budget
    patience: int = 5  # validations without improvement before stopping (0: never stop early)
    regularise_when_stuck: bool = True  # a run without regularisation that stops improving switches it on
    regularise_patience: int = 2  # validations without improvement before that switch (at most `patience`)
    save_interval: float = 120.0  # seconds between safety checkpoints
    compile: bool = False
    log_every: int = 10


VALIDATION_SHARE = 0.1  # of a time budget, at most, spent validating
MAX_VAL_TOKENS = 131_072  # an evenly spread subset of a big validation split: 20 validations stay cheap


# ---------------------------------------------------------------- devices and processes

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    use_nccl = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA GPU is available")
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple MPS is not available")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """(context manager factory, GradScaler or None) for the requested precision."""
    if precision == "auto":
        precision = "fp32" if device.type == "cpu" else (
            "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp32" or device.type == "mps":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" and device.type == "cuda" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(batch)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# ---------------------------------------------------------------- schedule, step, validation

@dataclass(frozen=True)
class Budget:
    """What a run may spend: steps, seconds, or both (whichever runs out first ends it)."""

    steps: int = 0
    seconds: float = 0.0

    def __post_init__(self):
        if self.steps <= 0 and self.seconds <= 0:
            raise ValueError("a training budget needs steps or time")

    def progress(self, step: int, elapsed: float) -> float:
        """0 at the start, 1 when the budget is spent."""
        done = max(step / self.steps if self.steps else 0.0, elapsed / self.seconds if self.seconds else 0.0)
        return min(1.0, done)

    def describe(self) -> str:
        parts = ([f"{self.steps:,} steps"] if self.steps else []) + ([minutes(self.seconds)] if self.seconds else [])
        return " or ".join(parts) + (", whichever comes first" if len(parts) == 2 else "")


WARMUP_SHARE = 0.05  # warm-up never takes more than this share of the budget


def lr_at(step: int, progress: float, cfg: TrainConfig, warmup: int) -> float:
    """Linear warm-up over `warmup` steps or 5% of the budget, whichever ends first, times a
    cosine from 1 to 0.1 over the budget's progress: the decay ends exactly when the budget does,
    whether time or steps bind (a one-minute run must not spend itself warming up)."""
    warm = min(1.0, max((step + 1) / max(1, warmup), progress / WARMUP_SHARE))
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch_for_step(sampler: WindowSampler, seed: int, rank: int, step: int):
    """(tokens (B, T+1), controls (B, T+1, C) or None) for this step: a pure function of its arguments."""
    sampler.rng = np.random.Generator(np.random.PCG64([seed, rank, step]))
    batch = sampler.next_batch()
    return batch if isinstance(batch, tuple) else (batch, None)


def lm_loss(model, batch: torch.Tensor, controls: torch.Tensor | None = None) -> torch.Tensor:
    logits, _ = model(batch[:, :-1], controls=None if controls is None else controls[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), ignore_index=PAD)


def train_step(model, optimizer, batch, controls, autocast, scaler, grad_clip: float) -> torch.Tensor:
    with autocast():
        loss = lm_loss(model, batch, controls)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.detach()


@torch.no_grad()
def window_losses(model, windows: np.ndarray, device, autocast, batch_size: int = 32, controls=None) -> torch.Tensor:
    """(windows, len - 1) NLL in nats of each window's tokens after the first (0 at padding),
    with the controls given (the caller hides those a causal figure must not see:
    `controls.causal`)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(windows), batch_size):
        batch = to_device(windows[i:i + batch_size], device)
        given = None if controls is None else to_device(controls[i:i + batch_size, :-1], device)
        with autocast():
            logits, _ = model(batch[:, :-1], controls=given)
        targets = batch[:, 1:]
        out.append(F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=PAD, reduction="none").cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, max(windows.shape[1] - 1, 0) if windows.ndim == 2 else 0))


def validation_nll(model, windows: np.ndarray, device, autocast, batch_size: int = 32, controls=None) -> float:
    """Mean NLL in nats per token over fixed validation windows (see `window_losses`)."""
    if len(windows) == 0:
        return float("nan")
    losses = window_losses(model, windows, device, autocast, batch_size, controls)
    count = int((torch.from_numpy(windows[:, 1:]) != PAD).sum())
    return float(losses.double().sum()) / max(count, 1)


# ---------------------------------------------------------------- optimizer state <-> tensors

def torch_weights(ckpt) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in ckpt.float_weights().items()}


def optimizer_to_tensors(optimizer) -> tuple[dict, list]:
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


# ---------------------------------------------------------------- how fast this device trains

class StepTimer:
    """Seconds one training step of a recipe size takes here: measured (one untimed and two timed
    steps on random tokens) while measuring costs under 2% of the budget, extrapolated from the
    last measured size by multiply-adds beyond that (a GPU measures more of the ladder than a CPU)."""

    PROBE_SHARE = 0.02

    def __init__(self, vocab: int, controls: tuple, device, budget_seconds: float):
        self.vocab, self.controls, self.device, self.budget = vocab, controls, device, budget_seconds
        self.extra = sum(dim for _, _, dim in controls)
        self.known = {}  # size name -> seconds per step
        self.reference = None  # (size, seconds) last measured

    def __call__(self, size: Size) -> float:
        if size.name not in self.known:
            guess = self._extrapolate(size)
            if guess is None or 3 * guess < self.PROBE_SHARE * self.budget:
                self.known[size.name] = self._measure(size)
                self.reference = (size, self.known[size.name])
            else:
                self.known[size.name] = guess
        return self.known[size.name]

    def _extrapolate(self, size: Size):
        if self.reference is None:
            return None
        ref, seconds = self.reference
        return seconds * size.step_cost(self.vocab, self.extra) / ref.step_cost(self.vocab, self.extra)

    def _measure(self, size: Size) -> float:
        config = ModelConfig(self.vocab, size.embedding, size.hidden, size.layers, 0.0, controls=self.controls)
        model = MelodyLSTM(config).to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        autocast, scaler = autocast_for(self.device, "auto")
        rng = np.random.default_rng(0)
        tokens = torch.from_numpy(rng.integers(0, self.vocab, (size.batch_size, size.seq_len + 1))).to(self.device)
        controls = None
        if self.controls:
            controls = torch.from_numpy(np.stack([rng.integers(0, values, (size.batch_size, size.seq_len + 1))
                                                  for _, values, _ in self.controls], axis=-1)).to(self.device)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            float(train_step(model, optimizer, tokens, controls, autocast, scaler, 1.0))  # float(): waits for the device
            times.append(time.perf_counter() - started)
        return min(times[1:])


# ---------------------------------------------------------------- the run

class Run:
    """Everything one training run owns: model, optimizer, data, counters, output folder."""

    def __init__(self, corpus, tokenizer: Tokenizer, model_config: ModelConfig | dict | None, cfg: TrainConfig,
                 resume=None, init_from=None, data_options=None, log=print, progress=True):
        """model_config: a ModelConfig, or a dict of model settings (None values: the recipe's)."""
        self.cfg, self.log = cfg, log
        self.corpus = [str(c) for c in corpus] if isinstance(corpus, (list, tuple)) else str(corpus)
        self.dist = setup_distributed(cfg.device)
        self.device = pick_device(cfg.device, self.dist)
        self.out = Path(cfg.out)
        self.progress = progress and self.dist.main
        self.step, self.evals_done, self.best_val, self.bad_evals, self.elapsed = 0, 0, float("inf"), 0, 0.0
        self.eval_seconds = 0.0  # how long the last validation took
        self.best_weights = None  # kept in memory while the run may still go back to them to regularise
        self.history = []

        start = None
        if resume:
            start = load_checkpoint(self._resume_path(resume), with_train_state=True)
            tokenizer, model_config = start.tokenizer, start.model_config
        elif init_from:
            base = load_checkpoint(init_from)
            tokenizer, model_config = base.tokenizer, base.model_config
        elif (self.out / "last.safetensors").exists():
            raise ValueError(f"{self.out} already holds a training run: add --resume to continue it, "
                             f"or choose another folder with -o")
        self.tok = tokenizer
        by_hand = (isinstance(model_config, ModelConfig) or (model_config or {}).get("dropout") is not None
                   or cfg.transpose is not None or cfg.transpose_share is not None)
        known_styles = model_config.styles if isinstance(model_config, ModelConfig) and (resume or init_from) else None
        self.report, self.store = self._load_data(corpus, {**(data_options or {}), "style": cfg.style,
                                                           "styles": known_styles})
        if start is not None:  # a resumed run keeps its own recipe and budget, so its schedule is unchanged
            saved = start.train_state.get("train_config", {})
            keep = ("out", "device", "precision", "compile", "save_interval", "log_every")
            cfg = self.cfg = replace(cfg, **{k: v for k, v in saved.items() if k not in keep and hasattr(cfg, k)})
        styles = self.store.styles
        controls = ctl.model_controls(tokenizer.config.resolution, styles, CONTROL_DIMS, cfg.controls)
        timer = None
        if cfg.max_time and start is None and not isinstance(model_config, ModelConfig):
            timer = StepTimer(len(tokenizer), controls, self.device, cfg.max_time)
        self.recipe = recipe_for(len(self.store.train), cfg.max_time if not cfg.max_steps else 0.0, timer,
                                 steps=cfg.max_steps, epochs=cfg.epochs)
        cfg = self.cfg = replace(cfg, **{k: getattr(self.recipe, k) for k in
                                         ("batch_size", "seq_len", "lr", "transpose", "transpose_share")
                                         if getattr(cfg, k) is None})
        if not isinstance(model_config, ModelConfig):
            chosen = {k: v for k, v in (model_config or {}).items() if v is not None}
            model_config = ModelConfig(len(tokenizer), **{**{k: getattr(self.recipe, k) for k in
                                                             ("embedding", "hidden", "layers", "dropout")}, **chosen},
                                       controls=controls, styles=tuple(styles) if controls else (),
                                       causal_controls=bool(controls))
        self.model_config = model_config
        # a run the recipe left without regularisation may switch it on when validation stops improving
        self.may_regularise = cfg.regularise_when_stuck and not by_hand and start is None and not self.recipe.dropout
        self.key_prior = ctl.key_prior(np.asarray(self.store.train_controls), self.store.styles)
        self.style_voices = ctl.style_voices(np.asarray(self.store.train), np.asarray(self.store.train_controls),
                                             tokenizer, self.store.styles)
        torch.manual_seed(cfg.seed)  # same seed, same initial weights
        self.model = (base.build_model() if init_from and not resume else MelodyLSTM(model_config)).to(self.device)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.99), fused=fused or None)
        if start is not None:
            self._restore(start)
        self.autocast, self.scaler = autocast_for(self.device, cfg.precision)
        self.train_model = self.model
        if cfg.compile:
            self.train_model = torch.compile(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=ids)
        columns = ctl.columns_of(model_config)
        train_controls = self.store.train_controls[:, columns] if columns else None
        self.sampler = WindowSampler(self.store.train, self.tok, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.transpose,
                                     train_controls, ctl.unknown_of(model_config), transpose_share=cfg.transpose_share)
        index = validation_index(len(self.store.val), self.sampler.seq_len, MAX_VAL_TOKENS)
        self.val_windows = self.store.val[index].astype(np.int64)
        self.val_controls = self.store.val_controls[index][..., columns].astype(np.int64) if columns else None
        self.tokens_per_step = cfg.batch_size * self.sampler.seq_len * self.dist.world
        self.steps_per_epoch = max(1, math.ceil(len(self.store.train) / self.tokens_per_step))
        self.budget = self._plan_budget()
        self.warmup = min(cfg.warmup, max(1, self.budget.steps // 10)) if self.budget.steps else cfg.warmup
        self.next_eval = self._eval_after(self.step, self.budget.progress(self.step, self.elapsed))

    def _plan_budget(self) -> Budget:
        """The user's budget (steps and/or time, or epochs as steps), else the recipe's default."""
        from .recipe import default_steps

        cfg = self.cfg
        steps = cfg.max_steps or (math.ceil(cfg.epochs * self.steps_per_epoch) if cfg.epochs else 0)
        if not steps and not cfg.max_time:
            steps = default_steps(len(self.store.train), self.tokens_per_step)
        return Budget(steps, cfg.max_time)

    def _eval_after(self, step: int, progress: float) -> float:
        """Progress at which the next validation runs: `evals` evenly spread over the budget."""
        gap = 1.0 / max(1, self.cfg.evals)
        if self.budget.seconds and self.eval_seconds:  # a short time budget: validation takes <= 10% of it
            gap = max(gap, self.eval_seconds / (VALIDATION_SHARE * self.budget.seconds))
        after = (math.floor(progress / gap + 1e-9) + 1) * gap
        if after - progress < gap / 2:  # the gap just grew (a slow validation): no two in a row
            after += gap
        return min(1.0, after)

    def describe_plan(self) -> str:
        """What the run will do and why, for the user (printed at start)."""
        c, m, r = self.cfg, self.model_config, self.recipe
        by_hand = " (some values set by hand)" if (c.batch_size, c.seq_len, c.lr, c.transpose, m.layers, m.hidden) != (
            r.batch_size, r.seq_len, r.lr, r.transpose, r.layers, r.hidden) else ""
        budget = self.budget.describe()
        if self.budget.steps:
            budget += f" (= {self.budget.steps / self.steps_per_epoch:.1f} epochs)"
        styles = self.report.get("styles") or {}
        controls = ", ".join(m.control_names) or "none"
        return (f"recipe: {r.size} model{by_hand}: {r.reason}\n"
                + (f"styles: {', '.join(f'{k} ({v} files)' for k, v in styles.items())}\n" if styles else "")
                + f"controls: {controls}\n"
                f"model: {m.layers}x{m.hidden} LSTM (embedding {m.embedding}, dropout {m.dropout}), "
                f"{self.model.num_parameters():,} parameters, on {self.device}; windows {c.batch_size}x{self.sampler.seq_len}, "
                f"lr {c.lr:g}, " + (f"transposition +-{c.transpose} on {c.transpose_share:.0%} of the windows\n"
                                     if c.transpose and c.transpose_share else "no transposition\n") +
                f"budget: {budget}; warm-up {self.warmup} steps, cosine decay to the end of the budget, "
                f"{c.evals} validations, early stop after {c.patience} without improvement"
                + (f" (after {self.patience} the first time: regularise instead)" if self.may_regularise and c.patience else ""))

    @property
    def epochs_done(self) -> float:
        return self.step * self.tokens_per_step / max(1, len(self.store.train))

    def _resume_path(self, resume) -> Path:
        path = Path(resume) if isinstance(resume, (str, Path)) and str(resume) not in ("", "True") else self.out
        return path / "last.safetensors" if path.is_dir() else path

    def _load_data(self, corpus, options):
        if self.dist.world > 1 and not self.dist.main:
            torch.distributed.barrier()  # rank 0 tokenizes and fills the cache first
        report, store = load_corpus(corpus, self.tok, progress=self.progress, val_fraction=self.cfg.val_fraction, **options)
        if self.dist.world > 1 and self.dist.main:
            torch.distributed.barrier()
        if store is None:
            raise ValueError(f"no usable MIDI file in {corpus} ({report['files_found']} found)")
        if len(store.train) < 2:
            raise ValueError(f"{corpus}: too little music to train on")
        return report, store

    def _restore(self, ckpt) -> None:
        self.model.load_state_dict(torch_weights(ckpt))
        state = ckpt.train_state
        optimizer_from_tensors(self.optimizer, ckpt.train_tensors_torch(), state["param_groups"])
        self.step, self.evals_done = state["step"], state.get("evals", 0)
        self.best_val = state.get("best_val") or float("inf")
        self.bad_evals, self.elapsed = state.get("bad_evals", 0), state.get("elapsed", 0.0)
        self.may_regularise = state.get("may_regularise", False)

    # -------------------------------------------------------- checkpoints and logs

    def save(self, name: str, val_nll: float | None = None) -> None:
        if not self.dist.main:
            return
        tensors, groups = optimizer_to_tensors(self.optimizer)
        state = {"step": self.step, "evals": self.evals_done, "best_val": self._finite(self.best_val),
                 "bad_evals": self.bad_evals, "elapsed": self.elapsed, "param_groups": groups,
                 "may_regularise": self.may_regularise,
                 "train_config": asdict(self.cfg)}
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "corpus": {k: self.report[k] for k in ("files_used", "notes", "tokens", "seconds")},
                "val_nll": self._finite(val_nll if val_nll is not None else self.best_val),
                "val_bits_per_note": self._bits_per_note(val_nll if val_nll is not None else self.best_val),
                "step": self.step, "corpus_path": self.corpus, "val_fraction": self.cfg.val_fraction,
                "sources": [[str(folder), name] for folder, name in parse_sources(self.corpus, self.cfg.style)],
                "epochs": round(self.epochs_done, 2), "elapsed_s": round(self.elapsed, 1),
                "recipe": self.recipe.size, "key_prior": self.key_prior,
                "style_voices": self.style_voices}
        save_checkpoint(self.out / name, self.model, self.tok, state, tensors if name == "last.safetensors" else {}, meta)

    @staticmethod
    def _finite(x):
        return x if x is not None and math.isfinite(x) else None

    def _bits_per_note(self, nll):
        notes, tokens = self.store.meta["val_notes"], self.store.meta["val_tokens"]
        if not notes or nll is None or not math.isfinite(nll):
            return None
        return nll * tokens / notes / math.log(2)

    def log_metrics(self, record: dict) -> None:
        self.history.append(record)
        if self.dist.main:
            try:
                with open(self.out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as exc:  # disk full: say which file
                raise write_error(self.out / "metrics.jsonl", exc) from None

    # -------------------------------------------------------- loop

    def validation_controls(self) -> np.ndarray | None:
        """The control inputs validation gives: causal ones only (a model from before causal
        controls has key, chord and density hidden); the best checkpoint, early stopping and the
        switch to regularise all follow this figure."""
        if self.val_controls is None:
            return None
        return ctl.causal(self.val_controls, self.model_config, hidden_controls(self.model_config))

    def validate(self) -> float:
        nll = float("nan")
        if self.dist.main:
            nll = validation_nll(self.model, self.val_windows, self.device, self.autocast,
                                 controls=self.validation_controls())
        if self.dist.world > 1:
            value = torch.tensor([nll], dtype=torch.float64)
            torch.distributed.broadcast(value, 0)
            nll = float(value)
        return nll

    def evaluate_and_save(self) -> bool:
        """Validate, keep the best checkpoint; True when early stopping says enough."""
        self.evals_done += 1
        started = time.perf_counter()
        nll = self.validate()
        self.eval_seconds = time.perf_counter() - started
        record = {"step": self.step, "epoch": round(self.epochs_done, 3), "val_nll": self._finite(nll),
                  "val_bits_per_note": self._bits_per_note(nll), "elapsed_s": round(self.elapsed, 2)}
        self.log_metrics(record)
        if not math.isfinite(nll):  # no validation files: keep the latest as best
            self.save("best.safetensors")
        elif nll < self.best_val - 1e-4:
            self.best_val, self.bad_evals = nll, 0
            self.save("best.safetensors", nll)
            if self.may_regularise:
                self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
        self.save("last.safetensors")
        if self.dist.main:
            self.log(f"step {self.step:,} ({self.epochs_done:.1f} epochs, {self.elapsed / 60:.1f} min): "
                     f"validation {nll:.4f} nats/token"
                     + (f", {record['val_bits_per_note']:.2f} bits/note" if record["val_bits_per_note"] else ""))
        return self.patience > 0 and self.bad_evals >= self.patience

    @property
    def patience(self) -> int:
        """Validations without improvement that end this phase: the switch to regularisation, or the run."""
        return min(self.cfg.patience, self.cfg.regularise_patience) if self.may_regularise else self.cfg.patience

    def train(self, clock=time.perf_counter) -> str:
        """Run until the budget is spent; returns 'done', 'early-stopped' or 'interrupted'.
        `clock` is read once per step (tests pass a fake one)."""
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            atomic_write_bytes(self.out / "ingest.json", json.dumps(self.report, indent=2).encode())
        cfg, model, budget = self.cfg, self.train_model, self.budget
        model.train()
        bar = tqdm(total=1000, initial=round(1000 * budget.progress(self.step, self.elapsed)), disable=not self.progress,
                   unit="‰", dynamic_ncols=True, leave=False, bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}")
        status, self.stop_requested = "done", False
        last_save = window_start = now = clock()  # read once per step: the schedule is a function of it
        started = now - self.elapsed
        window_steps, running, evaluated_at = 0, None, -1
        progress = budget.progress(self.step, self.elapsed)
        try:
            with self._ctrl_c_ends_the_step():
                while progress < 1.0:
                    if self.stop_requested:
                        raise KeyboardInterrupt
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr_at(self.step, progress, cfg, self.warmup)
                    torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + self.dist.rank)  # dropout noise
                    batch, controls = batch_for_step(self.sampler, cfg.seed, self.dist.rank, self.step)
                    batch = to_device(batch, self.device)
                    controls = None if controls is None else to_device(controls, self.device)
                    loss = train_step(model, self.optimizer, batch, controls, self.autocast, self.scaler, cfg.grad_clip)
                    self.step += 1
                    window_steps += 1
                    now = clock()
                    self.elapsed = self._agree(now - started)
                    progress = budget.progress(self.step, self.elapsed)
                    if self.step % cfg.log_every == 0 or progress >= 1.0:
                        value = float(loss)  # one device sync per log interval, not per step
                        rate = window_steps * self.tokens_per_step / max(1e-9, now - window_start)
                        running = value if running is None else 0.9 * running + 0.1 * value
                        self.log_metrics({"step": self.step, "loss": value, "lr": self.optimizer.param_groups[0]["lr"],
                                          "tokens_per_s": round(rate), "elapsed_s": round(self.elapsed, 2)})
                        bar.set_postfix(loss=f"{running:.3f}", tok_s=f"{rate:,.0f}", step=self.step)
                        window_start, window_steps = now, 0
                    bar.update(round(1000 * progress) - bar.n)
                    if progress >= self.next_eval - 1e-9:
                        self.next_eval = self._eval_after(self.step, progress)
                        evaluated_at = self.step
                        if self.evaluate_and_save():
                            if not self.may_regularise:
                                status = "early-stopped"
                                break
                            self.regularise()
                        last_save = now
                    if now - last_save > cfg.save_interval:
                        self.save("last.safetensors")
                        last_save = now
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            bar.close()
        if status == "interrupted":
            self.save("last.safetensors")
        elif evaluated_at != self.step:
            self.evaluate_and_save()
        if self.dist.main:
            self.write_loss_curve()
        self.check_ranks_in_sync()
        return status

    def regularise(self) -> None:
        """Validation stopped improving although the recipe forecast too few passes to memorise the
        music (few long, repetitive pieces, such as pop songs, are learnt by heart sooner): rather
        than end the run mid-schedule with the learning rate still high, go back to the best weights
        and spend the rest of the budget with dropout and transposition on."""
        dropout, transpose, share = regularisation(len(self.store.train))
        best = self.best_weights
        if best is None and (self.out / "best.safetensors").exists():  # resumed since the best
            best = torch_weights(load_checkpoint(self.out / "best.safetensors"))
        if best is not None:
            self.model.load_state_dict(best)
        self.model.set_dropout(dropout)
        self.model_config = self.model.config
        self.cfg = replace(self.cfg, transpose=transpose, transpose_share=share)
        self.sampler.transpose, self.sampler.transpose_share = transpose, share
        self.may_regularise, self.best_weights, self.bad_evals = False, None, 0
        self.log_metrics({"step": self.step, "regularised": {"dropout": dropout, "transpose": transpose,
                                                             "transpose_share": share}})
        if self.dist.main:
            self.log(f"validation stopped improving after {self.epochs_done:.1f} passes: back to the best weights, "
                     f"with dropout {dropout} and transposition +-{transpose} on {share:.0%} of the windows "
                     f"for the rest of the budget")

    @contextlib.contextmanager
    def _ctrl_c_ends_the_step(self):
        """Ctrl-C lets the current step finish, so the saved state is exactly that of a step
        boundary and --resume continues the same schedule (a second Ctrl-C stops at once)."""
        import signal
        import threading

        if self.dist.world > 1 or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _agree(self, elapsed: float) -> float:
        """All ranks must see the same clock, or a time budget would end them at different steps."""
        if self.dist.world <= 1 or not self.budget.seconds:
            return elapsed
        value = torch.tensor([elapsed], dtype=torch.float64)
        torch.distributed.broadcast(value, 0)
        return float(value)

    def close(self) -> None:
        """Leave the process group together: a rank that exits while its peer still talks to it
        can take the peer down with it (gloo aborts on a closed connection)."""
        if self.dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def check_ranks_in_sync(self) -> None:
        if self.dist.world <= 1:
            return
        checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in self.model.parameters())], dtype=torch.float64)
        gathered = [torch.zeros_like(checksum) for _ in range(self.dist.world)]
        torch.distributed.all_gather(gathered, checksum)
        in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
        self.log_metrics({"step": self.step, "ranks": self.dist.world, "ranks_in_sync": in_sync})
        if not in_sync:
            raise RuntimeError("distributed ranks diverged: their weights differ")

    def write_loss_curve(self) -> None:
        from .plots import loss_curve_png

        try:
            records = [json.loads(line) for line in (self.out / "metrics.jsonl").read_text().splitlines()]
            loss_curve_png(records, self.out / "loss.png")
        except (OSError, ValueError, ImportError) as exc:
            self.log(f"note: no loss curve written ({exc})")
