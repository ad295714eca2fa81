"""Training: `melodylstm train FOLDER`.

Data order and dropout noise are pure functions of (seed, rank, step), so a resumed run repeats
exactly what an uninterrupted one would do, with no random state to save. Multi-GPU and
multi-node runs use torchrun + DistributedDataParallel."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .data import WindowSampler, load_corpus, validation_windows
from .config import ModelConfig
from .model import MelodyLSTM
from .tokenizer import PAD, Tokenizer


@dataclass
class TrainConfig:
    out: str
    epochs: int = 30
    max_steps: int = 0  # 0: as many as `epochs` take
    max_time: float = 0.0  # seconds; 0: no limit
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100  # steps of linear warm-up, then cosine decay to lr/10
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    transpose: int = 5  # augmentation: random transposition within +-N semitones
    val_fraction: float = 0.1
    patience: int = 5  # epochs without validation improvement before stopping
    save_interval: float = 120.0  # seconds between safety checkpoints
    compile: bool = False
    log_every: int = 10


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

def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_for_step(sampler: WindowSampler, seed: int, rank: int, step: int) -> np.ndarray:
    sampler.rng = np.random.Generator(np.random.PCG64([seed, rank, step]))
    return sampler.next_batch()


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits, _ = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), ignore_index=PAD)


def train_step(model, optimizer, batch, autocast, scaler, grad_clip: float) -> torch.Tensor:
    with autocast():
        loss = lm_loss(model, batch)
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
def validation_nll(model, windows: np.ndarray, device, autocast, batch_size: int = 32) -> float:
    """Mean NLL in nats per token over fixed validation windows."""
    if len(windows) == 0:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = to_device(windows[i:i + batch_size], device)
        with autocast():
            logits, _ = model(batch[:, :-1])
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=PAD, reduction="sum")
        total += float(nll)
        count += int((targets != PAD).sum())
    model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------- optimizer state <-> tensors

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


# ---------------------------------------------------------------- the run

class Run:
    """Everything one training run owns: model, optimizer, data, counters, output folder."""

    def __init__(self, corpus, tokenizer: Tokenizer, model_config: ModelConfig, cfg: TrainConfig,
                 resume=None, init_from=None, data_options=None, log=print, progress=True):
        self.cfg, self.log, self.corpus = cfg, log, str(corpus)
        self.dist = setup_distributed(cfg.device)
        self.device = pick_device(cfg.device, self.dist)
        self.out = Path(cfg.out)
        self.progress = progress and self.dist.main
        self.step, self.epoch, self.best_val, self.bad_epochs, self.elapsed = 0, 0, float("inf"), 0, 0.0
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
        self.tok, self.model_config = tokenizer, model_config

        self.report, self.store = self._load_data(corpus, data_options or {})
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
        self.sampler = WindowSampler(self.store.train, self.tok, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.transpose)
        self.val_windows = validation_windows(self.store.val, self.sampler.seq_len)
        tokens_per_step = cfg.batch_size * self.sampler.seq_len * self.dist.world
        self.steps_per_epoch = max(1, math.ceil(len(self.store.train) / tokens_per_step))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch

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
        self.model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ckpt.float_weights().items()})
        state = ckpt.train_state
        optimizer_from_tensors(self.optimizer, ckpt.train_tensors_torch(), state["param_groups"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.best_val = state.get("best_val") or float("inf")
        self.bad_epochs, self.elapsed = state.get("bad_epochs", 0), state.get("elapsed", 0.0)

    # -------------------------------------------------------- checkpoints and logs

    def save(self, name: str, val_nll: float | None = None) -> None:
        if not self.dist.main:
            return
        tensors, groups = optimizer_to_tensors(self.optimizer)
        state = {"step": self.step, "epoch": self.epoch, "best_val": self._finite(self.best_val),
                 "bad_epochs": self.bad_epochs, "elapsed": self.elapsed, "param_groups": groups,
                 "train_config": asdict(self.cfg)}
        meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "corpus": {k: self.report[k] for k in ("files_used", "notes", "tokens", "seconds")},
                "val_nll": self._finite(val_nll if val_nll is not None else self.best_val),
                "val_bits_per_note": self._bits_per_note(val_nll if val_nll is not None else self.best_val),
                "step": self.step, "corpus_path": self.corpus, "val_fraction": self.cfg.val_fraction}
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
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # -------------------------------------------------------- loop

    def validate(self) -> float:
        nll = float("nan")
        if self.dist.main:
            nll = validation_nll(self.model, self.val_windows, self.device, self.autocast)
        if self.dist.world > 1:
            value = torch.tensor([nll], dtype=torch.float64)
            torch.distributed.broadcast(value, 0)
            nll = float(value)
        return nll

    def end_epoch(self) -> bool:
        """Validate, keep the best checkpoint; True when early stopping says enough."""
        self.epoch += 1
        nll = self.validate()
        record = {"step": self.step, "epoch": self.epoch, "val_nll": self._finite(nll),
                  "val_bits_per_note": self._bits_per_note(nll)}
        self.log_metrics(record)
        if not math.isfinite(nll):  # no validation files: keep the latest as best
            self.save("best.safetensors")
        elif nll < self.best_val - 1e-4:
            self.best_val, self.bad_epochs = nll, 0
            self.save("best.safetensors", nll)
        else:
            self.bad_epochs += 1
        self.save("last.safetensors")
        if self.dist.main:
            self.log(f"epoch {self.epoch}: validation {nll:.4f} nats/token"
                     + (f", {record['val_bits_per_note']:.2f} bits/note" if record["val_bits_per_note"] else ""))
        return self.cfg.patience > 0 and self.bad_epochs >= self.cfg.patience

    def train(self) -> str:
        """Run to the end; returns 'done', 'early-stopped', 'time-limit' or 'interrupted'."""
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            (self.out / "ingest.json").write_text(json.dumps(self.report, indent=2))
        cfg, model = self.cfg, self.train_model
        model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, leave=False)
        tokens_per_step = cfg.batch_size * self.sampler.seq_len * self.dist.world
        started, last_save, status = time.perf_counter() - self.elapsed, time.perf_counter(), "done"
        window_start, window_steps, running = time.perf_counter(), 0, None
        try:
            while self.step < self.total_steps:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(self.step, self.total_steps, cfg)
                torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + self.dist.rank)  # dropout noise
                batch = to_device(batch_for_step(self.sampler, cfg.seed, self.dist.rank, self.step), self.device)
                loss = train_step(model, self.optimizer, batch, self.autocast, self.scaler, cfg.grad_clip)
                self.step += 1
                window_steps += 1
                self.elapsed = time.perf_counter() - started
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    value = float(loss)  # one device sync per log interval, not per step
                    rate = window_steps * tokens_per_step / max(1e-9, time.perf_counter() - window_start)
                    running = value if running is None else 0.9 * running + 0.1 * value
                    self.log_metrics({"step": self.step, "epoch": self.epoch, "loss": value,
                                      "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": round(rate),
                                      "elapsed_s": round(self.elapsed, 2)})
                    bar.set_postfix(loss=f"{running:.3f}", tok_s=f"{rate:,.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(1)
                if self.step % self.steps_per_epoch == 0 and self.end_epoch():
                    status = "early-stopped"
                    break
                if cfg.max_time and self.elapsed >= cfg.max_time:
                    status = "time-limit"
                    break
                if time.perf_counter() - last_save > cfg.save_interval:
                    self.save("last.safetensors")
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            bar.close()
        if status != "early-stopped" and self.step % self.steps_per_epoch != 0:
            if status == "interrupted":
                self.save("last.safetensors")
            else:
                self.end_epoch()
        if self.dist.main:
            self.write_loss_curve()
        self.check_ranks_in_sync()
        return status

    def check_ranks_in_sync(self) -> None:
        if self.dist.world <= 1:
            return
        checksum = torch.tensor([sum(float(p.double().sum()) for p in self.model.parameters())], dtype=torch.float64)
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
