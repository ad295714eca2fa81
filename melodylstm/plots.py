"""Static figures (matplotlib, drawn off-screen with the Agg backend)."""
from __future__ import annotations

from .fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve_png(records, path) -> None:
    """Training loss and validation NLL against steps."""
    plt = _pyplot()
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_nll"]) for r in records if r.get("val_nll") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="training loss", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation NLL", color="#dd8452")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
