"""Model hyperparameters and the sampling default, kept free of torch so that loading a
checkpoint for sampling (numpy only) never pays torch's import time."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

# Below 1 the sampler skips the model's least likely tokens. With the bundled model, 32 pieces at
# 0.8 were closer to held-out chorales on all nine `stats` features together (mean overlap 0.82)
# than at 0.9 (0.78) or 1.0 (0.68), chiefly in pitch range, pitch count and scale consistency.
DEFAULT_TEMPERATURE = 0.8  # generate
# continue, jam and the studio answer at 1.0, the model's own distribution: on held-out chorales and
# tunes (evaluate --continuation) its answers then match the real continuations' share of notes in
# the key (within 0.01) and rhythm best; 0.8 kept them more in the key than the music itself
CONTINUE_TEMPERATURE = 1.0
# key guidance (sampling.KeyGuide): a key the user names is held hard (benchmarks/controls.py: at 3,
# 32 of 32 pieces came out in the asked key; the previous model 29 of 32, 22 unguided); a key
# generate draws from the corpus is told plainly; a key heard in a primer is held a little less than told (-0.5: the answers then
# keep the real continuations' share of notes in the key within 0.01, `evaluate --continuation`;
# told plainly, they stayed in the key more than the music does)
# continue: the answer's note lengths are drawn from the model's times the primer's own (its last
# bars), to this power. On held-out chorale sopranos (benchmarks/continuation.py) the answers' note-
# length overlap with the real continuation went 0.63 -> 0.78 at 1.0, the pitch distance 2.18 -> 1.74
PRIMER_RHYTHM_STRENGTH = 1.0
# continue: the answer's pitches are drawn from the model's times a kernel density of the primer's
# last bars' pitches (phrase.register_bias), this wide in semitones, to this power. Median
# distance of the answers' mean pitch to the real continuation's (benchmarks/continuation.py,
# chosen on the chorale sopranos): sopranos 2.67 -> 1.64, Palestrina 2.87 -> 1.45, Nottingham
# 3.21 -> 1.75, four-voice chorales 1.75 -> 1.53; the other features unchanged
PRIMER_REGISTER_STRENGTH = 1.0
PRIMER_REGISTER_WIDTH = 2.0
# ... over its last 4 bars rather than 2 (with the rhythm echo): sopranos 1.65 -> 1.35 (as close as
# repeating 25% -> 31%); not tuned on: Monteverdi 2.25 -> 2.03, Palestrina 1.85 -> 1.98, Nottingham
# 1.29 -> 1.44 (as close 53% -> 62%); 3 bars: 1.52
PRIMER_REGISTER_BARS = 4
# continue a one-voice primer: the pitch that started at this moment 4 and 2 bars earlier (primer or
# answer) gets these logits added (sampling.Echo; Magenta's Lookback RNN hears the same as inputs).
# Median pitch distance / pieces as close as repeating the primer (benchmarks/continuation.py,
# chosen on the chorale sopranos): sopranos 1.64 / 24% -> 1.45 / 33%, Nottingham 1.75 / 33% ->
# 1.67 / 40%, Palestrina 1.45 / 38% -> 1.66 / 41%. 1 and 2 bars back made the sopranos worse
# (2.04 at 2 and 1); four-voice primers are left alone (their inter-onsets got worse)
ECHO_LAGS = (4, 2)
ECHO_WEIGHTS = (1.0, 1.0)
# ... and these logits to the length of that note (a line's rhythm: the next note starts where it
# ends). Chorale sopranos, as close as repeating the primer for density / note lengths / pitch:
# none 39% / 27% / 22%; (1, 1) 49 / 27 / 22; (2, 2) 57 / 31 / 25; (3, 1) 63 / 41 / 25; (4, 1) 65 /
# 53 / 25; (5, 1) 75 / 63 / 29 (near a copy of the primer's rhythm); a 1-bar lag made it worse
ECHO_LENGTH_WEIGHTS = (4.0, 1.0)
# ... and where nothing sounded then, these logits are taken from every pitch, while an answer may
# rest as long as the primer's last 4 bars do (PRIMER_REST_BARS; 2 before). Silent time (real),
# sopranos / Palestrina / Monteverdi: 0.014 / 0.006 / 0.017 (0.025 / 0.193 / 0.127) -> 0.021 / 0.019
# / 0.060 (repeating the primer: 0.021 / 0.062 / 0.091); pitch distance Monteverdi 2.03 -> 1.65,
# Palestrina 2.23 -> 2.14, the rest unchanged. Without the longer rests (1, 1) to (4, 2) did
# nothing: most primers' last 2 bars have no rest, so none was allowed
# Until session 16 a phrase ended at its last note: its closing breath (a rest before the bar line)
# was not heard, did not count as a rest (an answer to a phrase whose only rest closed it could
# never rest) and was filled by the answer's first notes. Now the phrase ends at the bar line
# (phrase.phrase_end) and the weights matter: silent time of the answers, mean of seeds 0-2
# (real / repeating the primer), (2, 1) -> (16, 8) taken from every note-start token: sopranos
# 0.011 -> 0.023 (0.025 / 0.021), Essen folk songs 0.012 -> 0.023 (0.046 / 0.021), Monteverdi
# 0.040 -> 0.084 (0.127 / 0.091), Palestrina 0.010 -> 0.024 (0.193 / 0.062); pitch distance within
# the seeds' spread on every set; (16, 1) the same pitch, rests a little less. A phrase that
# breathed here breathes here again
ECHO_REST_WEIGHTS = (16.0, 8.0)
PRIMER_REST_BARS = 4
# continue: samples drawn per answer; the one nearest the phrase's last bars is kept (candidates.py)
CONTINUE_CANDIDATES = 32
NAMED_KEY_STRENGTH = 3.0
# A key the user names. With lookback the model copies its own first bars, so a piece that begins
# around the relative minor or the dominant stays there: `--key`, 24 keys x 4 seeds
# (benchmarks/keys.py), chorale / tune, 99% / 76% with the key told and guided alone. Its tonic
# triad got TONIC_BIAS logits (root, third, fifth) at every step until session 18: 100% / 98%, but
# a drone (the tonic 52% of a tune's notes, the corpus's tunes 24%; chorales 36% against 19%). Now
# the triad is pushed in the first TONIC_BARS bars only, and a KeyKeeper (sampling.py) then gives
# each degree of the key's scale (melody-profile share >= KEY_KEEPER_FLOOR) up to
# KEY_KEEPER_STRENGTH logits in proportion to how far it falls short of its share, counting
# KEY_KEEPER_NOTES notes of the profile itself before the first: 100% / 96% (seeds 11..14: 100% /
# 100% with generate's rest cap, 98% without), the tonic 20% / 20% of the notes. Strength 3: tunes
# 92%; the triad's degrees alone: 96%, tonic 26%; no opening bar: tunes 92% (seeds 11..14: 99%),
# more empty beats
TONIC_BIAS = (2.0, 1.0, 1.0)
TONIC_BARS = 1
KEY_KEEPER_STRENGTH = 5.0
KEY_KEEPER_NOTES = 4.0
KEY_KEEPER_FLOOR = 0.05
# --chords: the model's chord input is the chord of the beat before (causal), which steers less
# than the current beat's chord did; guidance on the chord (as on the key) and a prior of +2 on the
# chord's tones bring chord tones on strong beats back above 0.8 (benchmarks/controls.py): 16 pieces
# of 8 bars, "C F G C", chorale/tune: 0.43/0.35 told only, 0.56/0.51 guided, 0.85/0.85 with the prior
CHORD_STRENGTH = 3.0
CHORD_TONE_BIAS = 2.0
PICKED_KEY_STRENGTH = 0.0
PRIMER_KEY_STRENGTH = -0.5

# Embedding size of each control input (controls.py); small next to the token embedding, since
# each control has few values. The LSTM sees them concatenated with the token embedding, except
# the SUMMED ones: embedded at the token embedding's size and added to it, so the first layer's
# input (the step's cost) does not grow with them
SUMMED = -1
CONTROL_DIMS = {"key": 16, "chord": 24, "density": 8, "position": 16, "style": 8,
                "back1": SUMMED, "back2": SUMMED, "back4": SUMMED, "back8": SUMMED,
                "gap1": SUMMED, "gap2": SUMMED, "gap4": SUMMED, "gap8": SUMMED}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding: int = 128
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False  # share the embedding with the output layer (fewer parameters)
    # control inputs (controls.py): (name, number of values incl. "unknown", embedding size) each;
    # empty for a model without controls (checkpoints from before they existed)
    controls: tuple = ()
    styles: tuple = ()  # style names, in id order
    # True: key, chord and density are read from the notes before each token (controls.py), so a
    # likelihood may give them; False (checkpoints from before): they describe the notes being
    # predicted, so every figure hides them
    causal_controls: bool = False

    def __post_init__(self):
        if not (self.vocab_size > 3 and self.embedding > 0 and self.hidden > 0 and self.layers > 0):
            raise ValueError("model sizes must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        object.__setattr__(self, "controls", tuple((str(n), int(v), int(d)) for n, v, d in self.controls))
        if any(v < 1 or (d < 1 and d != SUMMED) for _, v, d in self.controls):
            raise ValueError("control sizes must be positive")
        object.__setattr__(self, "styles", tuple(str(s) for s in self.styles))

    @property
    def control_names(self) -> list:
        return [name for name, _, _ in self.controls]

    @property
    def input_size(self) -> int:
        """The first LSTM layer's input: token embedding and the unsummed control embeddings side by side."""
        return self.embedding + sum(dim for _, _, dim in self.controls if dim != SUMMED)

    def control_size(self, dim: int) -> int:
        """A control's embedding size (a SUMMED one has the token embedding's)."""
        return self.embedding if dim == SUMMED else dim

    def to_dict(self) -> dict:
        data = asdict(self)
        data["controls"], data["styles"] = [list(c) for c in self.controls], list(self.styles)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown model settings: {', '.join(sorted(set(data) - known))}")
        return cls(**data)

    def weight_shapes(self) -> dict:
        """Name -> shape of every tensor a checkpoint of this model holds (tied head excluded)."""
        V, E, H = self.vocab_size, self.embedding, self.hidden
        shapes = {"embed.weight": (V, E)}
        for name, values, dim in self.controls:
            shapes[f"control_embed.{name}.weight"] = (values, self.control_size(dim))
        for k in range(self.layers):
            shapes.update({f"lstm.weight_ih_l{k}": (4 * H, self.input_size if k == 0 else H), f"lstm.weight_hh_l{k}": (4 * H, H),
                           f"lstm.bias_ih_l{k}": (4 * H,), f"lstm.bias_hh_l{k}": (4 * H,)})
        if self.tie_weights:
            shapes.update({"bottleneck.weight": (E, H), "bottleneck.bias": (E,), "head.bias": (V,)})
        else:
            shapes.update({"head.weight": (V, H), "head.bias": (V,)})
        return shapes
