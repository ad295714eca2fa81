"""The training plan: `resolve_plan` turns the corpus summary, the budget, the device's step time
and the user's options into every setting of a run (model size, window, batch, learning rate,
dropout, augmentation, budget, warm-up), from defaults chosen by measurement: they follow from how
much music the corpus holds and how much training the budget buys. `melodylstm train` prints the
plan and why; every value can still be set by hand. The plan is pure data (JSON), kept with the run.
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

import math
from dataclasses import asdict, dataclass, fields, replace

from .config import ModelConfig

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
    Size("small", 2, 256, 128, 128, 8, 5e-3),  # windows of 128 x 8, not 64 x 16: benchmarks/README.md
    Size("medium", 2, 384, 128, 256, 32, 3e-3),
    Size("large", 3, 512, 256, 256, 64, 2e-3),
)
MIN_STEPS = 2_000  # a rung must get this many steps from a time budget to be chosen
REGULARISE_EPOCHS = 20  # passes over the corpus after which dropout and transposition pay off
# A validation counts as "not improving" (towards the switch to regularise and early stopping) only
# after this many passes: a model cannot memorise music it has heard less often, and before then a
# worse figure is the noise of a high learning rate (5 minutes on the bundled tunes, 1.5 passes:
# switching on that noise cost 6%, 3.38 vs 3.19 bits/note held out).
JUDGE_AFTER_PASSES = 3.0
# Early stopping counts only the validations of the second half of the budget: before, the learning
# rate is high and a worse figure mostly its noise, and the decay still to come is worth more (10
# minutes on Nottingham stopped at a third of the budget: benchmarks/README.md, "Early stopping").
STOP_AFTER = 0.5  # share of the budget
CORPUS_DROPOUT = {"small": 0.2, "medium": 0.2, "large": 0.1}  # by corpus size, when regularising
# The output layer shares the token embedding (through a projection of the LSTM's output to its
# size; Press & Wolf 2017): side by side at 5 minutes it gave 3-16% fewer bits/note on every corpus
# tried (benchmarks/README.md, "Tied weights").
TIE_WEIGHTS = True


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


# ---------------------------------------------------------------- the plan of one run

@dataclass
class TrainConfig:
    out: str
    max_steps: int = 0  # budget in steps (0: none)
    max_time: float = 0.0  # budget in seconds (0: none); with neither, the recipe's default steps
    epochs: float = 0.0  # another way to give a step budget: this many passes over the training tokens
    batch_size: int | None = None  # None: the recipe's value for this corpus
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
    velocity_shift: int = 10  # augmentation: every note of a window louder or softer by up to N velocity bins
    velocity_share: float = 0.5  # of the windows (the others keep the corpus's own dynamics)
    val_fraction: float = 0.1
    controls: bool = True  # learn the control inputs (key, chord, density, position, lookback, style)
    style: str | None = None  # the style of every file (default: first-level subfolder names)
    evals: int = 20  # validations per budget
    patience: int = 5  # validations without improvement before stopping (0: never stop early)
    regularise_when_stuck: bool = True  # a run without regularisation that stops improving switches it on
    regularise_patience: int = 2  # validations without improvement before that switch (at most `patience`)
    save_interval: float = 120.0  # seconds between safety checkpoints
    compile: bool = False
    log_every: int = 10

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        data = {"velocity_shift": 0, **data}  # a run planned before the shift existed resumes without it
        return cls(**{k: v for k, v in data.items() if k in known})


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


@dataclass(frozen=True)
class CorpusSummary:
    """What the plan needs to know of a corpus (no tokens)."""

    train_tokens: int
    vocab: int
    controls: tuple = ()  # (name, values, dim) of each control input a new model would learn
    styles: tuple = ()  # style names in id order
    style_files: tuple = ()  # (style, files) pairs, for the printed plan


@dataclass
class Plan:
    """Every setting of one run. Resolved once (resolve_plan), kept in the checkpoints and in
    plan.json, and changed in one place only: `regularised`."""

    recipe: Recipe
    train: TrainConfig  # the user's options with the recipe's values filled in
    model: ModelConfig
    budget: Budget
    window: int  # tokens per training window (seq_len, at most the training tokens)
    warmup: int
    may_regularise: bool  # the switch to dropout and transposition is still to come
    set_by_hand: bool  # some values differ from the recipe's
    train_tokens: int
    world: int = 1
    device: str = "cpu"
    measurement: str = ""  # how the step time was measured (time budgets)
    style_files: tuple = ()
    note: str = ""  # what changed since the start (the switch to regularisation)

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.window * self.world

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.train_tokens / self.tokens_per_step))

    @property
    def patience(self) -> int:
        """Validations without improvement that end this phase: the switch to regularisation, or the run."""
        c = self.train
        return min(c.patience, c.regularise_patience) if self.may_regularise else c.patience

    def regularised(self, step: int) -> "Plan":
        """The plan once validation stopped improving: dropout and transposition from here on."""
        dropout, transpose, share = regularisation(self.train_tokens)
        return replace(self, model=replace(self.model, dropout=dropout), may_regularise=False,
                       train=replace(self.train, transpose=transpose, transpose_share=share),
                       note=f"validation stopped improving at step {step:,}: dropout {dropout} and transposition "
                            f"+-{transpose} on {share:.0%} of the windows from there on")

    def describe(self) -> str:
        """What the run will do and why, for the user (printed at start and on resume)."""
        c, m, r = self.train, self.model, self.recipe
        budget = self.budget.describe()
        if self.budget.steps:
            budget += f" (= {self.budget.steps / self.steps_per_epoch:.1f} epochs)"
        parameters = sum(math.prod(shape) for shape in m.weight_shapes().values())
        transposition = (f"transposition +-{c.transpose} on {c.transpose_share:.0%} of the windows"
                         if c.transpose and c.transpose_share else "no transposition")
        if c.velocity_shift and c.velocity_share:
            transposition += f", velocities +-{c.velocity_shift} bins on {c.velocity_share:.0%}"
        lines = [f"recipe: {r.size} model{' (some values set by hand)' if self.set_by_hand else ''}: {r.reason}"]
        lines += [f"step time: {self.measurement}"] if self.measurement else []
        lines += [f"regularised: {self.note}"] if self.note else []
        lines += [f"styles: {', '.join(f'{k} ({v} files)' for k, v in self.style_files)}"] if self.style_files else []
        lines += [f"controls: {', '.join(m.control_names) or 'none'}",
                  f"model: {m.layers}x{m.hidden} LSTM (embedding {m.embedding}{', tied to the output' if m.tie_weights else ''}, "
                  f"dropout {m.dropout}), "
                  f"{parameters:,} parameters, on {self.device}; windows {c.batch_size}x{self.window}, "
                  f"lr {c.lr:g}, {transposition}",
                  f"budget: {budget}; warm-up {self.warmup} step{'s' if self.warmup != 1 else ''}, cosine decay to the end of the budget, "
                  f"{c.evals} validations, early stop after {c.patience} without improvement"
                  + (f" (counted after {JUDGE_AFTER_PASSES:g} passes and {STOP_AFTER:.0%} of the budget)"
                     if c.patience else "")
                  + (f" (after {self.patience} the first time: regularise instead)"
                     if self.may_regularise and c.patience else "")]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(recipe=self.recipe.as_dict(), train=asdict(self.train), model=self.model.to_dict(),
                    budget=asdict(self.budget), style_files=[list(p) for p in self.style_files])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The plan to_dict wrote; ValueError when it is not one."""
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a training plan ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_dict(cls, data: dict) -> "Plan":
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        return cls(**{**data, "recipe": Recipe(**data["recipe"]), "train": TrainConfig.from_dict(data["train"]),
                      "model": ModelConfig.from_dict(data["model"]), "budget": Budget(**data["budget"]),
                      "style_files": tuple(tuple(p) for p in data.get("style_files", ()))})


def resolve_plan(corpus: CorpusSummary, options: TrainConfig, model=None, step_seconds=None, world: int = 1,
                 device: str = "cpu") -> Plan:
    """The plan of a new run from the corpus, the budget (options.max_steps/max_time/epochs), the
    device (step_seconds(size) -> seconds one step of that size takes there, used with a time
    budget; `world` processes) and the user's choices: `options`' values that are not None, and
    `model`, a ModelConfig (kept as is) or a dict of model settings (None values: the recipe's).
    Pure: it reads no corpus, builds no model and looks at no clock."""
    fixed = isinstance(model, ModelConfig)
    by_hand = (fixed or (model or {}).get("dropout") is not None
               or options.transpose is not None or options.transpose_share is not None)
    seconds = options.max_time if not options.max_steps else 0.0
    recipe = recipe_for(corpus.train_tokens, seconds, None if fixed else step_seconds,
                        steps=options.max_steps, epochs=options.epochs)
    train = replace(options, **{k: getattr(recipe, k) for k in ("batch_size", "seq_len", "lr", "transpose",
                                                                "transpose_share") if getattr(options, k) is None})
    if not fixed:
        chosen = {k: v for k, v in (model or {}).items() if v is not None}
        recipe_model = {**{k: getattr(recipe, k) for k in ("embedding", "hidden", "layers", "dropout")},
                        "tie_weights": TIE_WEIGHTS}
        model = ModelConfig(corpus.vocab, **{**recipe_model, **chosen}, controls=corpus.controls,
                            styles=tuple(corpus.styles) if corpus.controls else (),
                            causal_controls=bool(corpus.controls))
    window = min(train.seq_len, corpus.train_tokens - 1)
    tokens_per_step = train.batch_size * window * world
    steps_per_epoch = max(1, math.ceil(corpus.train_tokens / tokens_per_step))
    budget = plan_budget(train, corpus.train_tokens, tokens_per_step, steps_per_epoch)
    return Plan(recipe, train, model, budget, window,
                warmup=min(train.warmup, max(1, budget.steps // 10)) if budget.steps else train.warmup,
                may_regularise=train.regularise_when_stuck and not by_hand and not recipe.dropout,
                set_by_hand=(train.batch_size, train.seq_len, train.lr, train.transpose, model.layers, model.hidden)
                != (recipe.batch_size, recipe.seq_len, recipe.lr, recipe.transpose, recipe.layers, recipe.hidden),
                train_tokens=corpus.train_tokens, world=world, device=device, style_files=tuple(corpus.style_files))


def plan_budget(options: TrainConfig, train_tokens: int, tokens_per_step: int, steps_per_epoch: int) -> Budget:
    """The user's budget (steps and/or time, or epochs as steps), else the recipe's default."""
    steps = options.max_steps or (math.ceil(options.epochs * steps_per_epoch) if options.epochs else 0)
    if not steps and not options.max_time:
        steps = default_steps(train_tokens, tokens_per_step)
    return Budget(steps, options.max_time)
