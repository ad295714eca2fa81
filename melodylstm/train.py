"""The training run of `melodylstm train FOLDER`: objects built from its plan (recipe.py), the
step loop, validation, checkpoints, and a clean stop on SIGINT, SIGTERM or SIGHUP.

A run is planned by a budget (steps, time, or both: whichever binds first), not by epochs: the
learning rate warms up, then decays on a cosine that ends exactly when the budget ends, and
validation runs a fixed number of times per budget (early stopping counts evaluations from the
third pass on). A run the recipe left unregularised that stops improving is not stopped the first
time: it goes back to its best weights and goes on with dropout and transposition (the corpus was
memorised sooner than its size predicted), so the schedule still ends with the budget.
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

from . import controls as ctl
from .checkpoint import load_checkpoint, meta_table, optimizer_from_tensors, optimizer_to_tensors, save_checkpoint
from .config import CONTROL_DIMS, ModelConfig
from .data import WindowSampler, load_corpus, parse_sources, style_rests, unmatched_styles_note, validation_index
from .metrics.likelihood import hidden_controls
from .fileio import atomic_write_bytes, write_error
from .model import MelodyLSTM
from .progress import TrainingProgress
from .recipe import JUDGE_AFTER_PASSES, STOP_AFTER, Budget, CorpusSummary, Plan, TrainConfig, resolve_plan
from .steptime import StepTimer
from .tokenizer import PAD, Tokenizer

__all__ = ["Budget", "Run", "StepTimer", "TrainConfig"]  # Budget, StepTimer, TrainConfig: re-exported


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

def fused_adamw(device: torch.device) -> bool:
    """One kernel for AdamW's whole update: on CUDA, and on the CPU where this PyTorch has it
    (2.4+): 0.6 ms a step instead of 4.2-4.8 for a 1.2 M-parameter model, about 5% of a step."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        return device.type in ("cuda", "cpu")
    except (RuntimeError, TypeError, ValueError):
        return False


def torch_weights(ckpt) -> dict:
    return {k: torch.from_numpy(v.copy()) for k, v in ckpt.float_weights().items()}


# ---------------------------------------------------------------- the run

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # each ends a run the same way: after the step, saved


class StopNow(Exception):
    """A second stop signal: leave at once; the last checkpoint on disk stands."""


@contextlib.contextmanager
def signal_handlers(names, handler, active: bool = True):
    """`handler` for the named signals (those this platform has: no SIGHUP on Windows) while the
    block runs, the previous handlers after it; nothing changes when not `active` (signals reach
    only the main thread)."""
    import signal
    import threading

    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {number: signal.signal(number, handler) for number in numbers}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def stop_signals_interrupt():
    """While a run is set up (tokenizing, measuring) there is nothing to save: SIGTERM and SIGHUP
    then stop it as Ctrl-C does, with one line instead of a silent death."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal_handlers(STOP_SIGNALS[1:], interrupt)


class Run:
    """Everything one training run owns: its plan, model, optimizer, data, counters, output folder.
    The plan (recipe.py) holds every setting; the constructor only builds objects from it."""

    def __init__(self, corpus, tokenizer: Tokenizer, model_config: ModelConfig | dict | None, cfg: TrainConfig,
                 resume=None, init_from=None, data_options=None, log=print, progress=True, sources=None):
        """model_config: a ModelConfig, or a dict of model settings (None values: the recipe's).
        sources: parse_sources(corpus, cfg.style), when the caller has it already (parsed once per run)."""
        self.log = log
        self.corpus = [str(c) for c in corpus] if isinstance(corpus, (list, tuple)) else str(corpus)
        self.sources = sources if sources is not None else parse_sources(corpus, cfg.style)
        self.dist = setup_distributed(cfg.device)
        self.device = pick_device(cfg.device, self.dist)
        self.out = Path(cfg.out)
        self.progress = progress and self.dist.main
        self.step, self.evals_done, self.best_val, self.bad_evals, self.elapsed = 0, 0, float("inf"), 0, 0.0
        self.eval_seconds = 0.0  # how long the last validation took
        self.next_eval = None  # progress at which the next validation runs (kept in checkpoints)
        self.saved_step = None  # step of the last last.safetensors this process wrote
        self.best_weights = None  # kept in memory while the run may still go back to them to regularise
        self.history = []
        self.stop_requested, self.stop_signal, self.stopped_at_once = False, None, False  # set by signals
        start, base = self._starting_point(resume, init_from)
        known = start or base
        self.tok = known.tokenizer if known else tokenizer
        val_fraction = start.train_state.get("train_config", {}).get("val_fraction") if start else None
        self.report, self.store = self._load_data({**(data_options or {}), "style": cfg.style,
                                                   "val_fraction": val_fraction or cfg.val_fraction,
                                                   "styles": known.model_config.styles if known else None})
        self.plan = self._resumed_plan(start, cfg) if start else self._new_plan(cfg, known.model_config if known
                                                                                  else model_config)
        self._build(start, base)

    # -------------------------------------------------------- the plan, and what it is read as

    def _starting_point(self, resume, init_from):
        """(checkpoint to resume, checkpoint to fine-tune from): at most one of them."""
        if resume:
            return load_checkpoint(self._resume_path(resume), with_train_state=True), None
        if init_from:
            return None, load_checkpoint(init_from)
        if (self.out / "last.safetensors").exists():
            raise ValueError(f"{self.out} already holds a training run: add --resume to continue it, "
                             f"or choose another folder with -o")
        return None, None

    def _corpus_summary(self, use_controls: bool) -> CorpusSummary:
        styles = tuple(self.store.styles)
        controls = ctl.model_controls(self.tok.config.resolution, styles, CONTROL_DIMS, use_controls)
        return CorpusSummary(len(self.store.train), len(self.tok), controls, styles,
                             tuple((self.report.get("styles") or {}).items()))

    def _new_plan(self, cfg: TrainConfig, model_config) -> Plan:
        corpus = self._corpus_summary(cfg.controls)
        timer = StepTimer(len(self.tok), corpus.controls, self.device, cfg.max_time) if cfg.max_time else None
        plan = resolve_plan(corpus, cfg, model_config, timer, self.dist.world, str(self.device))
        return replace(plan, measurement=timer.describe()) if timer and timer.known else plan

    def _resumed_plan(self, start, cfg: TrainConfig) -> Plan:
        """The plan the run started with (as the regularisation switch left it): a resumed run keeps
        its recipe and budget, so its schedule is unchanged; only where and how it runs may change."""
        state = start.train_state
        if "plan" in state:
            try:
                plan = Plan.from_dict(state["plan"])
            except ValueError as exc:
                raise ValueError(f"{start.path}: cannot resume: {exc}") from None
        else:  # a checkpoint from before plans were kept: rebuild it from its settings
            saved = TrainConfig.from_dict({**asdict(cfg), **state.get("train_config", {})})
            plan = resolve_plan(self._corpus_summary(saved.controls), saved, start.model_config)
            plan = replace(plan, may_regularise=state.get("may_regularise", False))
        here = {k: getattr(cfg, k) for k in ("out", "device", "precision", "compile", "save_interval", "log_every")}
        return replace(plan, train=replace(plan.train, **here), world=self.dist.world, device=str(self.device))

    # the plan's parts, read by the run and its callers under their old names (read-only)
    cfg = property(lambda self: self.plan.train, doc="TrainConfig: the user's options, the recipe's filled in")
    recipe = property(lambda self: self.plan.recipe)
    model_config = property(lambda self: self.plan.model)
    budget = property(lambda self: self.plan.budget)
    warmup = property(lambda self: self.plan.warmup)
    may_regularise = property(lambda self: self.plan.may_regularise)
    patience = property(lambda self: self.plan.patience)
    tokens_per_step = property(lambda self: self.plan.tokens_per_step)
    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)

    def describe_plan(self) -> str:
        """What the run will do and why, for the user (printed at start; the same on resume)."""
        return self.plan.describe()

    # -------------------------------------------------------- building from the plan

    def _build(self, start, base) -> None:
        plan, cfg = self.plan, self.plan.train
        self.key_prior = ctl.key_prior(np.asarray(self.store.train_controls), self.store.styles)
        self.style_voices = ctl.style_voices(np.asarray(self.store.train), np.asarray(self.store.train_controls),
                                             self.tok, self.store.styles)
        self.style_rests = style_rests(self.store.meta["train_files"], self.sources, self.tok.config.resolution)
        if base is not None:  # fine-tuning: a style the new music lacks keeps its keys, texture and rests
            self.key_prior = {**meta_table(base, "key_prior"), **self.key_prior}
            self.style_voices = {**meta_table(base, "style_voices"), **self.style_voices}
            self.style_rests = {**meta_table(base, "style_rests"), **self.style_rests}
        torch.manual_seed(cfg.seed)  # same seed, same initial weights
        self.model = (base.build_model() if base is not None else MelodyLSTM(plan.model)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.99), fused=fused_adamw(self.device) or None)
        if start is not None:
            self._restore(start)
        self.autocast, self.scaler = autocast_for(self.device, cfg.precision)
        self.train_model = self._wrapped(self.model)
        columns = ctl.columns_of(plan.model)
        train_controls = self.store.train_controls[:, columns] if columns else None
        self.sampler = WindowSampler(self.store.train, self.tok, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.transpose,
                                     train_controls, ctl.unknown_of(plan.model), transpose_share=cfg.transpose_share,
                                     names=plan.model.control_names, velocity_shift=cfg.velocity_shift,
                                     velocity_share=cfg.velocity_share)
        index = validation_index(len(self.store.val), plan.window, MAX_VAL_TOKENS)
        self.val_windows = self.store.val[index].astype(np.int64)
        self.val_controls = self.store.val_controls[index][..., columns].astype(np.int64) if columns else None
        if self.next_eval is None:
            self.next_eval = self._eval_after(self.step, self.budget.progress(self.step, self.elapsed))

    def _wrapped(self, model):
        """The module the steps run: compiled and/or DistributedDataParallel as asked."""
        if self.cfg.compile:
            model = torch.compile(model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def _eval_after(self, step: int, progress: float) -> float:
        """Progress at which the next validation runs: `evals` evenly spread over the budget. Called
        right after a validation; the result is kept in checkpoints, so a resumed run validates where
        the uninterrupted one does."""
        gap = 1.0 / max(1, self.cfg.evals)
        if self.budget.seconds and self.eval_seconds:  # a short time budget: validation takes <= 10% of it
            gap = max(gap, self.eval_seconds / (VALIDATION_SHARE * self.budget.seconds))
        after = (math.floor(progress / gap + 1e-9) + 1) * gap
        if after - progress < gap / 2:  # the gap just grew (a slow validation): no two in a row
            after += gap
        return min(1.0, after)

    @property
    def epochs_done(self) -> float:
        return self.step * self.tokens_per_step / max(1, len(self.store.train))

    def _resume_path(self, resume) -> Path:
        path = Path(resume) if isinstance(resume, (str, Path)) and str(resume) not in ("", "True") else self.out
        return path / "last.safetensors" if path.is_dir() else path

    def _load_data(self, options):
        if self.dist.world > 1 and not self.dist.main:
            torch.distributed.barrier()  # rank 0 tokenizes and fills the cache first
        report, store = load_corpus(self.corpus, self.tok, progress=self.progress, sources=self.sources,
                                    **options)
        if self.dist.world > 1 and self.dist.main:
            torch.distributed.barrier()
        if store is None:
            raise ValueError(f"no usable MIDI file in {self.corpus} ({report['files_found']} found)")
        if len(store.train) < 2:
            raise ValueError(f"{self.corpus}: too little music to train on")
        if report.get("styles_unmatched") and self.dist.main:
            self.log(unmatched_styles_note(report["styles_unmatched"], options["styles"]))
        return report, store

    def _restore(self, ckpt) -> None:
        self.model.load_state_dict(torch_weights(ckpt))
        state = ckpt.train_state
        optimizer_from_tensors(self.optimizer, ckpt.train_tensors_torch(), state["param_groups"])
        self.step, self.evals_done = state["step"], state.get("evals", 0)
        self.best_val = state.get("best_val") or float("inf")
        self.bad_evals, self.elapsed = state.get("bad_evals", 0), state.get("elapsed", 0.0)
        self.next_eval, self.eval_seconds = state.get("next_eval"), state.get("eval_seconds", 0.0)

    # -------------------------------------------------------- the run folder, checkpoints and logs

    RUN_FILES = ("last.safetensors", "best.safetensors", "plan.json", "ingest.json", "metrics.jsonl")

    def _prepare_folder(self) -> None:
        """Ready the run folder: temporary files a killed write left behind go, metrics past the
        checkpoint's step (a killed run's, which this run does again) go, the plan is written out."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in self.out.glob(".*.tmp"):  # fileio.atomic_path names them .<file>.<random>.tmp
            if any(tmp.name.startswith(f".{name}.") for name in self.RUN_FILES):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self._drop_metrics_after(self.step)
        atomic_write_bytes(self.out / "ingest.json", json.dumps(self.report, indent=2).encode())
        self._write_plan()

    def _drop_metrics_after(self, step: int) -> None:
        """metrics.jsonl as the uninterrupted run would have it at `step` (a line cut by a kill goes too)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                if json.loads(line)["step"] <= step:
                    kept.append(line)
        if kept != lines:
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def _write_plan(self) -> None:
        """plan.json: the plan as the checkpoints hold it, for people and tools to read."""
        if self.dist.main:
            atomic_write_bytes(self.out / "plan.json", json.dumps(self.plan.to_dict(), indent=2).encode())

    def save(self, name: str, val_nll: float | None = None) -> None:
        if not self.dist.main:
            return
        tensors, groups = optimizer_to_tensors(self.optimizer)
        state = {"step": self.step, "evals": self.evals_done, "best_val": self._finite(self.best_val),
                 "bad_evals": self.bad_evals, "elapsed": self.elapsed, "param_groups": groups,
                 "may_regularise": self.may_regularise, "next_eval": self.next_eval,
                 "eval_seconds": self.eval_seconds, "train_config": asdict(self.cfg), "plan": self.plan.to_dict()}
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "corpus": {k: self.report[k] for k in ("files_used", "notes", "tokens", "seconds")},
                "val_nll": self._finite(val_nll if val_nll is not None else self.best_val),
                "val_bits_per_note": self._bits_per_note(val_nll if val_nll is not None else self.best_val),
                "step": self.step, "corpus_path": self.corpus, "val_fraction": self.cfg.val_fraction,
                "sources": [[str(folder), style] for folder, style in self.sources],
                "epochs": round(self.epochs_done, 2), "elapsed_s": round(self.elapsed, 1),
                "recipe": self.recipe.size, "key_prior": self.key_prior,
                "style_voices": self.style_voices, "style_rests": self.style_rests}
        save_checkpoint(self.out / name, self.model, self.tok, state, tensors if name == "last.safetensors" else {}, meta)
        if name == "last.safetensors":
            self.saved_step = self.step

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

    def evaluate_and_save(self, final: bool = False) -> bool:
        """Validate, keep the best checkpoint, switch regularisation on when the plan says so (not at
        the end); True when early stopping says enough. All a validation decides is in the last
        checkpoint it writes, so a run killed right after it resumes as if nothing happened."""
        self.evals_done += 1
        started = time.perf_counter()
        nll = self.validate()
        self.eval_seconds = time.perf_counter() - started
        record = {"step": self.step, "epoch": round(self.epochs_done, 3), "val_nll": self._finite(nll),
                  "val_bits_per_note": self._bits_per_note(nll), "elapsed_s": round(self.elapsed, 2)}
        self.log_metrics(record)
        self._keep_best(nll)
        if self.dist.main:
            self.log(f"step {self.step:,} ({self.epochs_done:.1f} epochs, {self.elapsed / 60:.1f} min): "
                     f"validation {nll:.4f} nats/token"
                     + (f", {record['val_bits_per_note']:.2f} bits/note" if record["val_bits_per_note"] else ""))
        stop = self.patience > 0 and self.bad_evals >= self.patience
        if stop and self.may_regularise and not final:
            self.regularise()
            stop = False
        self.save("last.safetensors")
        return stop

    def _keep_best(self, nll: float) -> None:
        if not math.isfinite(nll):  # no validation files: keep the latest as best
            self.save("best.safetensors")
        elif nll < self.best_val - 1e-4:
            self.best_val, self.bad_evals = nll, 0
            self.save("best.safetensors", nll)
            if self.may_regularise:
                self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        elif self.epochs_done >= JUDGE_AFTER_PASSES and (self.may_regularise or self._late()):
            self.bad_evals += 1  # sooner, a worse figure is noise, not memorising

    def _late(self) -> bool:
        """Past the point where early stopping may end the run: before it the learning rate is
        still high and a worse validation mostly its noise; the decay that follows is worth more."""
        return self.budget.progress(self.step, self.elapsed) >= STOP_AFTER

    def train(self, clock=time.perf_counter) -> str:
        """Run until the budget is spent; returns 'done', 'early-stopped' or 'interrupted' (by a stop
        signal, after the step, saved; `stop_signal` says which, `stopped_at_once` a second one).
        `clock` is read once per step (tests pass a fake one)."""
        self._prepare_folder()
        with self._signals_end_the_step():
            try:
                status = self._loop(clock)
                if status == "interrupted" and self.saved_step != self.step:
                    self.save("last.safetensors")
                elif status == "done" and self.evaluated_at != self.step:
                    self.evaluate_and_save(final=True)
            except StopNow:  # mid-step, or mid-save: the checkpoint on disk is the last whole one
                self.stopped_at_once, status = True, "interrupted"
                return status
        if self.dist.main:
            self.write_loss_curve()
        self.check_ranks_in_sync()
        return status

    def _loop(self, clock) -> str:
        """Steps until the budget is spent, validation stops the run, or a signal asks to stop."""
        budget = self.budget
        report = TrainingProgress(self.progress, self.log, budget.progress(self.step, self.elapsed))
        last_save = window_start = now = clock()  # read once per step: the schedule is a function of it
        started = now - self.elapsed
        window_steps, running, self.evaluated_at = 0, None, -1
        progress = budget.progress(self.step, self.elapsed)
        try:
            while progress < 1.0:
                if self.stop_requested:
                    return "interrupted"
                loss = self._step(progress)
                window_steps += 1
                now = clock()
                self.elapsed = self._agree(now - started)
                progress = budget.progress(self.step, self.elapsed)
                if self.step % self.cfg.log_every == 0 or progress >= 1.0:
                    value = float(loss)  # one device sync per log interval, not per step
                    rate = window_steps * self.tokens_per_step / max(1e-9, now - window_start)
                    running = value if running is None else 0.9 * running + 0.1 * value
                    self.log_metrics({"step": self.step, "loss": value, "lr": self.optimizer.param_groups[0]["lr"],
                                      "tokens_per_s": round(rate), "elapsed_s": round(self.elapsed, 2)})
                    report.measured(running, rate)
                    window_start, window_steps = now, 0
                report.update(self.step, progress, self.elapsed)
                if progress >= self.next_eval - 1e-9:
                    self.next_eval = self._eval_after(self.step, progress)
                    self.evaluated_at = self.step
                    if self.evaluate_and_save():
                        return "early-stopped"
                    last_save = now
                    report.validated()
                if now - last_save > self.cfg.save_interval:
                    self.save("last.safetensors")
                    last_save = now
            return "done"
        except KeyboardInterrupt:  # where no signal handler could be set (several processes, a thread)
            return "interrupted"
        finally:
            report.close()

    def _step(self, progress: float) -> torch.Tensor:
        """One optimizer step; its rate, dropout noise and batch are functions of the step number."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, progress, cfg, self.warmup)
        torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + self.dist.rank)  # dropout noise
        batch, controls = batch_for_step(self.sampler, cfg.seed, self.dist.rank, self.step)
        batch = to_device(batch, self.device)
        controls = None if controls is None else to_device(controls, self.device)
        loss = train_step(self.train_model, self.optimizer, batch, controls, self.autocast, self.scaler, cfg.grad_clip)
        self.step += 1
        return loss

    def regularise(self) -> None:
        """Validation stopped improving although the recipe forecast too few passes to memorise the
        music (few long, repetitive pieces, such as pop songs, are learnt by heart sooner): rather
        than end the run mid-schedule with the learning rate still high, go back to the best weights
        and spend the rest of the budget with dropout and transposition on (the plan says how much)."""
        best = self.best_weights
        if best is None and (self.out / "best.safetensors").exists():  # resumed since the best
            best = torch_weights(load_checkpoint(self.out / "best.safetensors"))
        if best is not None:
            self.model.load_state_dict(best)
        self.plan = self.plan.regularised(self.step)
        cfg = self.cfg
        self.model.set_dropout(self.model_config.dropout)
        self.sampler.transpose, self.sampler.transpose_share = cfg.transpose, cfg.transpose_share
        self.best_weights, self.bad_evals = None, 0
        self.log_metrics({"step": self.step, "regularised": {"dropout": self.model_config.dropout,
                                                             "transpose": cfg.transpose,
                                                             "transpose_share": cfg.transpose_share}})
        self._write_plan()
        if self.dist.main:
            self.log(f"validation stopped improving after {self.epochs_done:.1f} passes: back to the best weights, "
                     f"with dropout {self.model_config.dropout} and transposition +-{cfg.transpose} on "
                     f"{cfg.transpose_share:.0%} of the windows for the rest of the budget")

    def _signals_end_the_step(self):
        """SIGINT (Ctrl-C), SIGTERM (a scheduler, `timeout`, `docker stop`) and SIGHUP (a closing
        terminal) all let the current step finish, so the saved state is exactly that of a step
        boundary and --resume continues the same schedule; a second one leaves at once (StopNow)."""
        def request_stop(signum, frame):
            if self.stop_requested:
                raise StopNow()
            self.stop_requested, self.stop_signal = True, signum

        return signal_handlers(STOP_SIGNALS, request_stop, active=self.dist.world == 1)

    def summary(self, status: str, command: str) -> str:
        """The run's last line; a stopped one says how, what was saved and how to go on (`command`
        is the train command line to add --resume to)."""
        import signal

        resume = f"resume with: {command} -o {self.out} --resume"
        if self.stopped_at_once:
            return f"stopped at once by a second signal: {self.out}/last.safetensors holds the last whole checkpoint; {resume}"
        best = f"best validation {self.best_val:.4f} nats/token; " if self.best_val < float("inf") else ""
        what = status if self.stop_signal is None else f"stopped by {signal.Signals(self.stop_signal).name}, saved"
        return (f"{what} at step {self.step:,} ({self.epochs_done:.1f} epochs, {self.elapsed / 60:.1f} min): "
                f"{best}checkpoints in {self.out}/ (best.safetensors, last.safetensors)"
                + (f"; {resume}" if status == "interrupted" else ""))

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
