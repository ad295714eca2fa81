"""Training defaults chosen by measurement: model size, window, batch, learning rate, dropout and
augmentation follow from how much music the corpus holds and how much training the budget buys.
`melodylstm train` prints the recipe it picked and why; every value can still be set by hand.
The measurements behind these numbers: benchmarks/README.md.

Two limits pick the size. The corpus caps it (a big model on a few hundred songs only memorises
them). A time budget caps it too: a model is worth its cost only when the budget buys it enough
optimizer steps, and on a short budget a small model taking many steps beats a big one taking few
by far (one CPU minute: 1x256 reaches 2.73 bits/note on held-out folk songs, 2x256 with long
windows 9.15).
Regularisation (dropout, transposition) is for a model that sees the music many times; a budget
buying only a few passes gets none, since it costs likelihood and there is nothing to memorise yet.
Passes are only a forecast: a corpus of few long, repetitive pieces is memorised sooner, so when
validation stops improving, training switches regularisation on itself (train.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SMALL_CORPUS = 400_000  # training tokens: below this, a few hundred short pieces
LARGE_CORPUS = 4_000_000  # above this, thousands of pieces: a bigger model pays off


@dataclass(frozen=True)
class Size:
    """One rung of the size ladder, with the window, batch and learning rate that suit it."""

    name: str
    layers: int
    hidden: int
    embedding: int
    seq_len: int
    batch_size: int
    lr: float

    def step_cost(self, vocab: int, extra_inputs: int = 0) -> float:
        """Multiply-adds of one step (forward), to compare the rungs' speed."""
        lstm = sum(4 * self.hidden * ((self.embedding + extra_inputs if k == 0 else self.hidden) + self.hidden)
                   for k in range(self.layers))
        return float(self.batch_size * self.seq_len * (lstm + self.hidden * vocab))


SIZES = (  # cheapest first
    Size("tiny", 1, 256, 64, 64, 16, 1e-2),
    Size("small", 2, 256, 128, 64, 16, 5e-3),
    Size("medium", 2, 384, 128, 256, 32, 3e-3),
    Size("large", 3, 512, 256, 256, 64, 2e-3),
)
MIN_STEPS = 2_000  # a rung must get this many steps from a time budget to be chosen
REGULARISE_EPOCHS = 20  # passes over the corpus after which dropout and transposition pay off
CORPUS_DROPOUT = {"small": 0.2, "medium": 0.2, "large": 0.1}  # by corpus size, when regularising


@dataclass(frozen=True)
class Recipe:
    size: str  # tiny | small | medium | large
    layers: int
    hidden: int
    embedding: int
    dropout: float
    seq_len: int
    batch_size: int
    lr: float
    transpose: int  # +-semitones, on `transpose_share` of the windows (the rest keep the corpus's keys)
    transpose_share: float
    reason: str
    expected_steps: int = 0  # what the budget should buy (0: no time budget)

    def as_dict(self) -> dict:
        return asdict(self)


def corpus_class(train_tokens: int) -> str:
    return "small" if train_tokens < SMALL_CORPUS else "medium" if train_tokens < LARGE_CORPUS else "large"


def recipe_for(train_tokens: int, seconds: float = 0.0, step_seconds=None, steps: int = 0,
               epochs: float = 0.0) -> Recipe:
    """The defaults for a corpus of this many training tokens and a budget of `seconds` (time),
    `steps` or `epochs` (none: the default steps). step_seconds(size) -> seconds one training step
    of that size takes on this device (measured by the caller); needed with a time budget."""
    corpus = corpus_class(train_tokens)
    cap = [s.name for s in SIZES].index(corpus)
    why = f"{train_tokens:,} training tokens ({corpus} corpus: at most a {corpus} model)"
    size, expected = SIZES[cap], 0
    if seconds and step_seconds is not None:
        # cheapest first, so the costly sizes can be extrapolated from a measured one
        buys = [(size, int(seconds / max(1e-6, step_seconds(size)))) for size in SIZES[:cap + 1]]
        size, expected = next(((s, n) for s, n in reversed(buys) if n >= MIN_STEPS), buys[0])
        why += (f"; in {minutes(seconds)} a {size.name} model gets about {expected:,} steps"
                + (f" (a bigger one would get fewer than {MIN_STEPS:,})" if size is not SIZES[cap] else ""))
    if not epochs:
        planned = expected or steps or default_steps(train_tokens, size.batch_size * size.seq_len)
        epochs = planned * size.batch_size * size.seq_len / max(1, train_tokens)
    if epochs >= REGULARISE_EPOCHS:
        dropout, transpose, share = regularisation(train_tokens)
        why += f"; ~{epochs:.0f} passes over the music: dropout and transposition against memorising it"
    else:
        dropout, transpose, share = 0.0, 0, 0.0
        why += f"; ~{epochs:.1f} passes over the music: too few to need dropout or transposition"
    return Recipe(size.name, size.layers, size.hidden, size.embedding, dropout, size.seq_len, size.batch_size,
                  size.lr, transpose, share, why, expected)


def minutes(seconds: float) -> str:
    return "1 minute" if seconds == 60 else f"{seconds / 60:g} minutes"


def regularisation(train_tokens: int) -> tuple[float, int, float]:
    """(dropout, +-semitones, share of the windows transposed) against memorising a corpus this big."""
    return CORPUS_DROPOUT[corpus_class(train_tokens)], 5, 0.5


def default_steps(train_tokens: int, tokens_per_step: int) -> int:
    """Budget when none is given: enough passes for a small corpus to reach its best (early stopping
    ends it sooner when validation stops improving), fewer passes as the corpus grows."""
    epochs = 60 if train_tokens < SMALL_CORPUS else 20 if train_tokens < LARGE_CORPUS else 5
    return int(min(200_000, max(2_000, epochs * train_tokens / max(1, tokens_per_step))))
