"""The training step's cost per control input set: what each set of inputs costs a step of the
same model, the variants' steps interleaved in one process (the machine's drift between
processes is larger than the differences measured).

    python benchmarks/step_cost.py                  # small size: 2x256, 8 windows of 128, one thread
    python benchmarks/step_cost.py --rounds 100 --threads 2

Variants: the control inputs before lookback (key, chord, density, position, style) with the
output layer untied and tied; today's inputs (lookback 1, 2, 4 and 8 bars back summed into the
token embedding, tied); the lookback side by side with it instead (as until session 15); and no
control inputs. Each round runs one forward, backward and AdamW step of every variant on
random tokens and control values; the median step and its speed against the first variant.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melodylstm.config import CONTROL_DIMS, ModelConfig  # noqa: E402
from melodylstm.controls import model_controls  # noqa: E402

LOOKBACK = ("back", "gap")
STYLES = ("a", "b")


def variants() -> dict:
    """name -> (control dims, tied output layer)."""
    before = {k: v for k, v in CONTROL_DIMS.items() if not k.startswith(LOOKBACK)}
    side_by_side = {**CONTROL_DIMS, **{k: 12 if k.startswith("back") else 6 for k in CONTROL_DIMS if k.startswith(LOOKBACK)}}
    return {"before lookback, untied": (before, False), "before lookback, tied": (before, True),
            "now: lookback summed into the token embedding, tied": (dict(CONTROL_DIMS), True),
            "lookback side by side (12 + 6 per lag), tied": (side_by_side, True),
            "no control inputs, tied": ({}, True)}


def make_step(dims: dict, tied: bool, vocab: int, batch: int, seq: int, sizes=(128, 256, 2)):
    """One training step of a fresh model with these control inputs, on fixed random data."""
    import torch
    import torch.nn.functional as F

    from melodylstm.model import MelodyLSTM

    embedding, hidden, layers = sizes
    controls = model_controls(12, STYLES, dims, bool(dims))
    model = MelodyLSTM(ModelConfig(vocab, embedding, hidden, layers, 0.0, tie_weights=tied, controls=controls,
                                   styles=STYLES if controls else (), causal_controls=bool(controls)))
    tokens = torch.randint(0, vocab, (batch, seq + 1))
    given = torch.stack([torch.randint(0, v, (batch, seq)) for _, v, _ in controls], -1) if controls else None
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        logits, _ = model(tokens[:, :-1], controls=given)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def measure(rounds: int, batch: int, seq: int, vocab: int = 330) -> dict:
    """name -> step seconds of each round, the variants taking turns."""
    steps = {name: make_step(dims, tied, vocab, batch, seq) for name, (dims, tied) in variants().items()}
    for step in steps.values():
        for _ in range(3):  # warm-up
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    times = measure(args.rounds, args.batch, args.seq)
    first = float(np.median(next(iter(times.values()))))
    print(f"| 2x256, {args.batch} x {args.seq} tokens, {args.threads} thread(s), {args.rounds} rounds | median step "
          "| tokens/s | speed vs the first |\n|---|---|---|---|")
    for name, ts in times.items():
        median = float(np.median(ts))
        print(f"| {name} | {median * 1e3:.1f} ms | {args.batch * args.seq / median:,.0f} | {first / median:.3f} |")


if __name__ == "__main__":
    main()
