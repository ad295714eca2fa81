"""How fast this device trains each recipe size: seconds per step, measured so that other work on
the machine does not change the answer (the fastest of several probes, more probes when they
disagree), extrapolated by multiply-adds where measuring would cost too much of the budget."""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import ModelConfig
from .model import MelodyLSTM
from .recipe import Size

PROBES = 3  # timed steps per size (after one untimed warm-up step)
MORE_PROBES = 6  # at most this many more when the first ones disagree
AGREE = 1.25  # probes agree when the slowest is within this factor of the fastest


class StepTimer:
    """Seconds one training step of a recipe size takes here. Measured while measuring costs under
    2% of the budget, extrapolated from the last measured size by multiply-adds beyond that (a GPU
    measures more of the ladder than a CPU). A busy machine makes some steps slow, never one fast,
    so the fastest probe is the device's own speed; probes that disagree are a sign of load, and
    more are taken to find it. `probe(size) -> seconds` times one step (tests inject a fake)."""

    PROBE_SHARE = 0.02

    def __init__(self, vocab: int, controls: tuple, device, budget_seconds: float, probe=None):
        self.vocab, self.controls, self.device, self.budget = vocab, controls, device, budget_seconds
        self.extra = sum(dim for _, _, dim in controls)
        self.probe = probe or self._real_probe
        self.known = {}  # size name -> seconds per step
        self.probes = {}  # size name -> every probe's seconds (measured sizes)
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

    def describe(self) -> str:
        """The measurement, one line: measured sizes with their probes, extrapolated ones marked ~."""
        parts = []
        for name, seconds in self.known.items():
            probes = self.probes.get(name)
            parts.append(f"{name} {milliseconds(seconds)}" + (f" (fastest of {len(probes)} probes, slowest "
                                                             f"{milliseconds(max(probes))})" if probes else
                                                             " (extrapolated)"))
        return ", ".join(parts) + f" on {self.device}"

    def _extrapolate(self, size: Size):
        if self.reference is None:
            return None
        ref, seconds = self.reference
        return seconds * size.step_cost(self.vocab, self.extra) / ref.step_cost(self.vocab, self.extra)

    def _measure(self, size: Size) -> float:
        times = [self.probe(size) for _ in range(PROBES)]
        while len(times) < PROBES + MORE_PROBES and sorted(times)[1] > AGREE * min(times):
            times.append(self.probe(size))  # the two fastest disagree: load, so look for the device's speed
        self.probes[size.name], self._probing = times, None  # let the probe model go
        return min(times)

    def _real_probe(self, size: Size) -> float:
        if getattr(self, "_probing", None) is None or self._probing[0] != size.name:
            self._probing = (size.name, *self._probe_setup(size))
            self._step(*self._probing[1:])  # untimed: the first step pays for allocation
        started = time.perf_counter()
        self._step(*self._probing[1:])
        return time.perf_counter() - started

    def _probe_setup(self, size: Size):
        from .train import autocast_for

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
        return model, optimizer, tokens, controls, autocast, scaler

    @staticmethod
    def _step(model, optimizer, tokens, controls, autocast, scaler) -> None:
        from .train import train_step

        float(train_step(model, optimizer, tokens, controls, autocast, scaler, 1.0))  # float(): waits for the device


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.3g} ms"
