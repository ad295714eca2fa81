"""Training defaults chosen by measurement: model size, window, batch, learning rate, dropout and
augmentation follow from how much music the corpus holds, and the default budget from how many
training tokens one step sees. `melodylstm train` prints the recipe it picked and why; every
value can still be set by hand. The measurements behind these numbers: benchmarks/README.md."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SMALL_CORPUS = 400_000  # training tokens: below this, a few hundred short pieces
LARGE_CORPUS = 4_000_000  # above this, thousands of pieces: a bigger model pays off


@dataclass(frozen=True)
class Recipe:
    size: str  # small | medium | large
    layers: int
    hidden: int
    embedding: int
    dropout: float
    seq_len: int
    batch_size: int
    lr: float
    transpose: int  # +-semitones, on `transpose_share` of the windows: half the windows keep the
    transpose_share: float  # corpus's keys (full transposition cost 9% bits/note), half learn every key
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def recipe_for(train_tokens: int) -> Recipe:
    """The defaults for a corpus of this many training tokens."""
    if train_tokens < SMALL_CORPUS:
        return Recipe("small", 2, 256, 128, 0.3, 128, 32, 3e-3, 5, 0.5,
                      f"{train_tokens:,} training tokens < {SMALL_CORPUS:,}: a small model, short windows "
                      "(many steps per minute) and more dropout, since it sees each piece many times")
    if train_tokens < LARGE_CORPUS:
        return Recipe("medium", 2, 384, 128, 0.2, 256, 32, 3e-3, 5, 0.5,
                      f"{train_tokens:,} training tokens: a medium model")
    return Recipe("large", 3, 512, 256, 0.1, 256, 64, 2e-3, 5, 0.5,
                  f"{train_tokens:,} training tokens >= {LARGE_CORPUS:,}: a large model, little dropout")


def default_steps(train_tokens: int, tokens_per_step: int) -> int:
    """Budget when none is given: enough passes for a small corpus to reach its best (early stopping
    ends it sooner when validation stops improving), fewer passes as the corpus grows."""
    epochs = 60 if train_tokens < SMALL_CORPUS else 20 if train_tokens < LARGE_CORPUS else 5
    return int(min(200_000, max(2_000, epochs * train_tokens / max(1, tokens_per_step))))
