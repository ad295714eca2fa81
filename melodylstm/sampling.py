"""Fast stateful sampling: one LSTM step per token, carrying (h, c), never re-feeding a window.

`FastLSTM` runs the trained weights in numpy with everything that does not change between steps
done once up front: the first layer's input projection becomes a lookup table, each deeper
layer's two mat-vecs become one over pre-packed [W_ih | W_hh] weights, all four gates come from
one exp over pre-negated weights (sigmoid(x) = 1 / (1 + exp(-x)), and the candidate's
tanh(x) = 2 * sigmoid(2x) - 1, the factors baked into the weights; exp is about twice as fast as
tanh), and all buffers are allocated once. `Sampler` adds the grammar masks, musical
constraints and the stopping rules on top.
"""
from __future__ import annotations

import numpy as np

from .config import SUMMED
from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, TempoMap
from .theory import MELODY_PROFILES, SCALES
from .tokenizer import BAR, DRUM_T, DURATION_T, EOS, PAD, PITCH_T, PROGRAM_T, SHIFT, START, Tokenizer, after_bar

NEG_INF = np.float32(-np.inf)


class FastLSTM:
    """Inference-only numpy twin of a MelodyLSTM for batched single-token steps."""

    def __init__(self, weights: dict, config, dtype=np.float32):
        """weights: name -> numpy array, as in a checkpoint (Checkpoint.float_weights())."""
        sd, c = weights, config
        self.layers, self.hidden, self.vocab = c.layers, c.hidden, c.vocab_size
        H = c.hidden
        # PyTorch gate order is i, f, g, o; reorder to i, f, o, g so the three sigmoid gates are contiguous
        order = np.concatenate([np.arange(0, 2 * H), np.arange(3 * H, 4 * H), np.arange(2 * H, 3 * H)])
        scale = np.full(4 * H, -1.0, dtype=np.float32)  # exp(-x) for the sigmoid gates i, f, o
        scale[3 * H:] = -2.0  # tanh(x) = 2 * sigmoid(2x) - 1 for the candidate g

        def packed(k):
            w_ih, w_hh = sd[f"lstm.weight_ih_l{k}"][order], sd[f"lstm.weight_hh_l{k}"][order]
            bias = (sd[f"lstm.bias_ih_l{k}"] + sd[f"lstm.bias_hh_l{k}"])[order] * scale
            return w_ih * scale[:, None], w_hh * scale[:, None], bias

        w_ih0, w_hh0, b0 = packed(0)
        E = sd["embed.weight"].shape[1]
        self.table = (sd["embed.weight"] @ w_ih0[:, :E].T + b0).astype(dtype)  # (vocab, 4H): layer 0 input, bias included
        # each control input is a lookup table too: its share of layer 0's input projection
        self.control_tables, col = [], E
        for name, _, dim in getattr(c, "controls", ()):
            cols = slice(0, E) if dim == SUMMED else slice(col, col + dim)  # a summed one shares the token's columns
            self.control_tables.append((sd[f"control_embed.{name}.weight"] @ w_ih0[:, cols].T).astype(dtype))
            col += 0 if dim == SUMMED else dim
        self.w = [np.ascontiguousarray(w_hh0.T, dtype=dtype)]  # (H, 4H)
        self.b = [None]
        for k in range(1, c.layers):
            w_ih, w_hh, b = packed(k)
            self.w.append(np.ascontiguousarray(np.concatenate([w_ih, w_hh], axis=1).T, dtype=dtype))  # (2H, 4H)
            self.b.append(b.astype(dtype))
        head = sd["head.weight"]
        if c.tie_weights:
            head = head @ sd["bottleneck.weight"]  # fold the bottleneck into the output layer
            bias = sd["head.bias"] + sd["embed.weight"] @ sd["bottleneck.bias"] if "bottleneck.bias" in sd else sd["head.bias"]
        else:
            bias = sd["head.bias"]
        self.w_out = np.ascontiguousarray(head.T, dtype=dtype)  # (H, vocab)
        self.b_out = bias.astype(dtype)
        self.batch = 0

    def reset(self, batch: int, h=None, c=None) -> None:
        """Allocate buffers for `batch` rows; optionally start from a state (layers, batch, H)."""
        H, L = self.hidden, self.layers
        self.batch = batch
        # xh[k] holds [input to layer k | h of layer k]; layer 0 uses only its h half
        self.xh = [np.zeros((batch, 2 * H), dtype=np.float32) for _ in range(L)]
        self.c = np.zeros((L, batch, H), dtype=np.float32)
        self.gates = np.empty((batch, 4 * H), dtype=np.float32)
        self.tmp = np.empty((batch, H), dtype=np.float32)
        self.logits = np.empty((batch, self.vocab), dtype=np.float32)
        self._last_controls = self._last_given = None
        if h is not None:
            for k in range(L):
                self.xh[k][:, H:] = h[k]
                if k + 1 < L:
                    self.xh[k + 1][:, :H] = h[k]
            self.c[:] = c

    def step(self, tokens: np.ndarray, controls: np.ndarray | None = None) -> np.ndarray:
        """Feed one token per row (and its control values, (batch, controls)); returns logits
        (batch, vocab), valid until the next call."""
        H, g, tmp = self.hidden, self.gates, self.tmp
        for k in range(self.layers):
            xh = self.xh[k]
            if k == 0:
                np.matmul(xh[:, H:], self.w[0], out=g)
                g += self.table[tokens]
                if self.control_tables:
                    g += self._control_input(controls)
            else:
                np.matmul(xh, self.w[k], out=g)
                g += self.b[k]
            np.exp(g, out=g)
            g += 1.0
            np.reciprocal(g, out=g)  # now sigmoid of every gate
            cand = g[:, 3 * H:]
            cand *= 2.0
            cand -= 1.0  # tanh of the candidate
            c = self.c[k]
            c *= g[:, H: 2 * H]  # forget gate
            np.multiply(g[:, :H], g[:, 3 * H:], out=tmp)  # input gate * candidate
            c += tmp
            np.tanh(c, out=tmp)
            h = xh[:, H:]
            np.multiply(g[:, 2 * H: 3 * H], tmp, out=h)  # output gate
            if k + 1 < self.layers:
                self.xh[k + 1][:, :H] = h
        np.matmul(self.xh[-1][:, H:], self.w_out, out=self.logits)
        self.logits += self.b_out
        return self.logits

    def _control_input(self, controls: np.ndarray) -> np.ndarray:
        """Sum of the control tables' rows, reused while the controls stay the same (they change
        with time, and a note's three tokens share one time)."""
        if controls is not self._last_given and (self._last_controls is None
                                                  or not np.array_equal(controls, self._last_controls)):
            total = self.control_tables[0][controls[:, 0]]
            for i in range(1, len(self.control_tables)):
                total += self.control_tables[i][controls[:, i]]
            self._last_controls, self._control_sum = controls.copy(), total
        self._last_given = controls
        return self._control_sum

    def state(self):
        H = self.hidden
        return np.stack([x[:, H:] for x in self.xh]), self.c.copy()

    def prime(self, tokens, controls=None, rows: int = 1, want_logits: bool = False):
        """Run a primer through `rows` rows at once (controls (T, C) shared, or (rows, T, C));
        returns (h, c) of shape (layers, rows, H), plus the logits after every token
        ((rows, T, vocab)) with `want_logits`.

        Layer by layer over the whole sequence: each layer's input projection for all steps is one
        large matrix product, and only the recurrent half runs step by step."""
        tokens = np.asarray(tokens, dtype=np.int64)
        T, H = len(tokens), self.hidden
        self.reset(rows)
        if T == 0:
            return (self.state(), np.zeros((rows, 0, self.vocab), np.float32)) if want_logits else self.state()
        if self.control_tables:
            controls = np.asarray(controls, dtype=np.int64)
            controls = np.broadcast_to(controls, (rows,) + controls.shape[-2:])

        def layer0_input(span):  # the lookups of a block of steps: all of them at once would be
            x = np.empty((rows, span.stop - span.start, 4 * H), dtype=np.float32)  # large (64 MB
            x[:] = self.table[tokens[span]]  # for 8k steps of 2 rows), each sum a pass over memory
            for i, table in enumerate(self.control_tables):
                np.add(x, table[controls[:, span, i]], out=x)
            return x

        outputs = np.empty((rows, T, H), dtype=np.float32)
        g = np.empty((rows, 4 * H), dtype=np.float32)
        tmp = np.empty((rows, H), dtype=np.float32)
        matmul, exp, add, multiply, tanh = np.matmul, np.exp, np.add, np.multiply, np.tanh
        block = 256
        for k in range(self.layers):
            w_hh = self.w[k] if k == 0 else self.w[k][H:]
            if k > 0:  # the input half of the packed weights, for every step at once
                x = outputs @ self.w[k][:H]
                x += self.b[k]
            h, c = self.xh[k][:, H:], self.c[k]
            i_gate, f_gate, o_gate, cand = g[:, :H], g[:, H: 2 * H], g[:, 2 * H: 3 * H], g[:, 3 * H:]
            # the same operations as FastLSTM.step, in place (no array made per step): the
            # Python overhead per step, not the arithmetic, is what long primers spend time on
            with np.errstate(over="ignore"):
                for t0 in range(0, T, block):
                    xs = layer0_input(slice(t0, min(T, t0 + block))) if k == 0 else x[:, t0: t0 + block]
                    for t in range(xs.shape[1]):
                        matmul(h, w_hh, out=g)
                        add(g, xs[:, t], out=g)
                        exp(g, out=g)
                        add(g, 1.0, out=g)
                        np.reciprocal(g, out=g)
                        multiply(cand, 2.0, out=cand)
                        add(cand, -1.0, out=cand)
                        multiply(c, f_gate, out=c)
                        multiply(i_gate, cand, out=tmp)
                        add(c, tmp, out=c)
                        tanh(c, out=tmp)
                        multiply(o_gate, tmp, out=h)
                        outputs[:, t0 + t] = h
            if k + 1 < self.layers:
                self.xh[k + 1][:, :H] = h
        state = self.state()
        if want_logits:
            return state, outputs @ self.w_out + self.b_out
        return state


# ---------------------------------------------------------------- musical constraints

def pitch_mask(tok: Tokenizer, key: tuple[int, str] | None, pitch_range: tuple[int, int] | None) -> np.ndarray:
    """Additive logit mask (0 or -inf) that removes PITCH tokens outside the key or range.
    Drums are never constrained. Raises ValueError when no pitch at all would remain."""
    mask = np.zeros(len(tok), dtype=np.float32)
    pitches = np.arange(tok.config.pitch_low, tok.config.pitch_high + 1)
    allowed = np.ones(len(pitches), dtype=bool)
    if key is not None:
        tonic, scale = key
        allowed &= np.isin((pitches - tonic) % 12, SCALES[scale])
    if pitch_range is not None:
        allowed &= (pitches >= pitch_range[0]) & (pitches <= pitch_range[1])
    if not allowed.any():
        raise ValueError("no pitch is left: the key and --pitch-range exclude every note the model knows "
                         f"({tok.config.pitch_low}-{tok.config.pitch_high})")
    mask[tok.pitch0: tok.pitch0 + len(pitches)][~allowed] = NEG_INF
    return mask


# ---------------------------------------------------------------- sampling loop

class Sampler:
    """Samples batches of token sequences that always decode, with grammar and musical masks.

    Each row tracks its grammar state (type of the last token, time, bar) in numpy arrays,
    so masking costs a few array operations per step whatever the batch size.
    """

    MAX_CHORD = 16  # notes starting together before time must move on: no runaway chords

    def __init__(self, net: FastLSTM, tok: Tokenizer, temperature=1.0, top_k=0, top_p=1.0,
                 constraint: np.ndarray | None = None, plan=None, guide=None, voices: int | None = None,
                 max_rest: int | None = None, chord_bias: tuple | None = None, priors=()):
        """plan: a controls.ControlPlan giving the control inputs at each step (None: a model
        without controls). guide: a KeyGuide (the network then runs twice the rows). voices:
        at most this many notes sounding at once (a new note waits until one ends). max_rest:
        the longest silence (steps) allowed once a note has sounded (None: any). chord_bias:
        (control column, (chord values, vocab) additive logits) for the chord each row is told.
        priors: objects that add logits from what each row played (`bias(logits, now)`) and hear
        each sampled token (`record(tokens, kinds, now)`), such as Echo."""
        self.net, self.tok, self.plan, self.guide = net, tok, plan, guide
        self.voices = min(int(voices), self.MAX_CHORD) if voices else None
        self.max_rest = None if max_rest is None else max(0, int(max_rest))
        self.chord_bias = chord_bias
        self.priors = list(priors)
        self.shifts = np.arange(1, tok.max_shift + 1)[None, :]  # the SHIFT tokens' step counts
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)
        follow = np.where(tok.follow, 0.0, NEG_INF).astype(np.float32)
        follow[:, EOS] = NEG_INF  # length is set by the options, not by the model stopping early
        follow[:, PAD] = NEG_INF
        follow[START] = NEG_INF
        follow[START, tok.bos] = 0.0
        if constraint is not None:
            follow = follow + constraint[None, :]
        self.follow = follow
        S = tok.max_shift
        # shift_room[r, k-1] = 0 if a shift of k steps stays before a bar line r steps away
        self.shift_room = np.where(np.arange(1, S + 1)[None, :] < np.arange(S + 2)[:, None], 0.0, NEG_INF).astype(np.float32)
        self.note_start = np.where(np.isin(tok.token_type, [PROGRAM_T, PITCH_T, DRUM_T]), NEG_INF, 0.0).astype(np.float32)

    def run(self, rows: int, state: dict, stop, rng: np.random.Generator, max_tokens: int, on_token=None):
        """Sample until `stop(row_state)` marks every row done or `max_tokens` is reached.

        state: dict of per-row arrays last_token, last_type, time, bar_index, next_bar (from `start_state`).
        Returns a list of token lists (without the stopping token)."""
        tok, net = self.tok, self.net
        history, kept = [], []  # one array per step (not per row): row r keeps the steps where it was alive
        done = np.zeros(rows, dtype=bool)
        shift_slice = slice(tok.shift0, tok.shift0 + tok.max_shift)
        grid = state["grid"]
        current = state["last_token"].copy()
        guide = self.guide
        for _ in range(max_tokens):
            controls = self.plan.values(state["time"]) if self.plan is not None else None
            with np.errstate(over="ignore"):  # exp(+large) = inf is the intended sigmoid(-large) = 0
                if guide is None:
                    logits = net.step(current, controls)
                else:
                    logits = guide.combine(net.step(np.concatenate([current, current]), guide.controls(controls)))
            logits += self.follow[state["last_type"]]
            if self.chord_bias is not None:
                column, table = self.chord_bias
                logits += table[controls[:, column]]
            if tok.config.bar_tokens:
                room = np.clip(state["next_bar"] - state["time"], 0, tok.max_shift + 1)
                logits[:, shift_slice] += self.shift_room[room]
            if self.max_rest is not None:
                self._no_long_rests(logits, state, shift_slice)
            for prior in self.priors:
                prior.bias(logits, state["time"])
            full = state["chord"] >= self.MAX_CHORD
            if self.voices:
                full |= (state["ends"] > state["time"][:, None]).sum(axis=1) >= self.voices
            if full.any():
                logits[full] += self.note_start
            nxt = self.choose(logits, rng)
            kinds = tok.token_type[nxt]
            for prior in self.priors:
                prior.record(nxt, kinds, state["time"])
            if self.plan is not None:  # the lookback inputs hear what each row plays
                self.plan.record(np.where(kinds == PITCH_T, tok.token_value[nxt], -1), state["time"])
            self._advance(state, nxt, kinds, grid)
            finished = stop(state, nxt, kinds) & ~done
            alive = ~done & ~finished
            history.append(nxt)
            kept.append(alive)
            if on_token is not None:
                for r in np.flatnonzero(alive):
                    on_token(r, int(nxt[r]))
            done |= finished
            if done.all():
                break
            current = nxt
        if not history:
            return [[] for _ in range(rows)]
        tokens, alive = np.stack(history), np.stack(kept)
        return [tokens[alive[:, r], r].tolist() for r in range(rows)]

    def _no_long_rests(self, logits, state, shift_slice) -> None:
        """Forbid moving time so far that the silence after the last note ends would pass
        `max_rest` (holes where the primer has none); rows that have heard no note are free."""
        last_end = state["ends"].max(axis=1)
        limit = last_end + self.max_rest - state["time"]  # the largest move still allowed
        bound = (last_end >= 0) & (limit < self.tok.max_shift)
        if not bound.any():
            return
        logits[:, shift_slice] += np.where(bound[:, None] & (self.shifts > limit[:, None]), NEG_INF, np.float32(0))
        if self.tok.config.bar_tokens:
            too_far = bound & (state["next_bar"] - state["time"] > limit)
            logits[too_far, BAR] = NEG_INF

    def _advance(self, state, tokens, kinds, grid) -> None:
        state["last_type"] = kinds.astype(np.int64)
        state["chord"] += kinds == DURATION_T
        ended = np.flatnonzero(kinds == DURATION_T)
        if len(ended):  # a note's end replaces the earliest end on record
            ends = state["ends"]
            slot = ends[ended].argmin(axis=1)
            ends[ended, slot] = state["time"][ended] + self.tok.token_value[tokens[ended]]
        state["chord"][(kinds == SHIFT) | (kinds == BAR)] = 0
        shift = kinds == SHIFT
        if shift.any():
            state["time"][shift] += self.tok.token_value[tokens[shift]]
        for r in np.flatnonzero(kinds == BAR):  # rare (once a bar), so a loop is fine
            state["bar_index"][r], state["time"][r] = after_bar(grid, int(state["bar_index"][r]), int(state["time"][r]))
            state["next_bar"][r] = grid.bar_start(int(state["bar_index"][r]) + 1)
            state["bars"][r] += 1

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.temperature <= 0:
            return logits.argmax(axis=1)
        if self.temperature != 1.0:
            logits *= np.float32(1.0 / self.temperature)
        if self.top_k and self.top_k < logits.shape[1]:
            kth = np.partition(logits, -self.top_k, axis=1)[:, -self.top_k][:, None]
            logits[logits < kth] = NEG_INF
        if self.top_p < 1.0:
            order = np.argsort(-logits, axis=1)
            sorted_logits = np.take_along_axis(logits, order, axis=1)
            probs = np.exp(sorted_logits - sorted_logits[:, :1])
            cum = np.cumsum(probs, axis=1)
            cut = cum - probs > self.top_p * cum[:, -1:]  # keep the smallest prefix reaching top_p
            sorted_logits[cut] = NEG_INF
            np.put_along_axis(logits, order, sorted_logits, axis=1)
        # Gumbel-max: argmax(logits + Gumbel noise) is an exact sample from softmax(logits)
        noise = rng.random(logits.shape, dtype=np.float32)
        np.maximum(noise, np.float32(1e-20), out=noise)
        np.log(noise, out=noise)
        np.negative(noise, out=noise)
        np.log(noise, out=noise)
        logits -= noise
        return logits.argmax(axis=1)


class KeyGuide:
    """Classifier-free guidance on the key (and on the chords, when the user gives a progression):
    the network runs each row twice, once told them and once with them hidden (training hid each
    20% of the time, so it knows both), and the pitch choice moves further in the direction they
    push it:
        log p(pitch) = cond + strength * (cond - hidden), each log-softmaxed over the pitches.
    Only pitches are guided: rhythm and form stay the model's own. Strength 0 is the model as told,
    -1 the model with them hidden, values between mix the two."""

    def __init__(self, tok: Tokenizer, columns, unknowns, strength: float):
        """columns, unknowns: the guided control columns (model order) and their unknown values."""
        self.pitches = slice(tok.pitch0, tok.pitch0 + tok.config.pitch_high - tok.config.pitch_low + 1)
        self.columns, self.unknowns = np.atleast_1d(columns), np.atleast_1d(unknowns)
        self.strength = np.float32(strength)
        self._given = self._doubled = None

    def controls(self, values: np.ndarray) -> np.ndarray:
        """Rows told the guided controls, then the same rows with them hidden (the same array
        while the values stay the same, so the network keeps reusing its control input)."""
        if values is not self._given:
            hidden = values.copy()
            hidden[:, self.columns] = self.unknowns
            self._given, self._doubled = values, np.concatenate([values, hidden])
        return self._doubled

    def combine(self, logits: np.ndarray) -> np.ndarray:
        rows = len(logits) // 2
        out = logits[:rows].copy()
        told, hidden = logits[:rows, self.pitches], logits[rows:, self.pitches]
        out[:, self.pitches] += self.strength * (_log_softmax(told) - _log_softmax(hidden))
        return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return x - (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))


class Echo:
    """What was played bars ago, as a prior (Magenta's Lookback RNN hears the same as inputs): at
    each step, `weights[i]` is added to the logit of the pitch that started at this moment
    `lags[i]` bars earlier, in the primer or in the answer so far, and `length_weights[i]` to the
    DURATION token of its length (in a line, a note's length is the rhythm: the next starts
    where it ends); where nothing sounded then, `rest_weights[i]` is taken from every token that
    starts a note (PROGRAM, PITCH, DRUM: a phrase that breathed there breathes again)."""

    def __init__(self, tok: Tokenizer, rows: int, bar_steps: int, primer_notes: np.ndarray, lags, weights,
                 length_weights=None, rest_weights=None):
        self.tok, self.offsets, self.weights = tok, [int(lag) * int(bar_steps) for lag in lags], weights
        none = (0.0,) * len(self.offsets)
        self.length_weights = tuple(length_weights) if length_weights is not None else none
        self.rest_weights = tuple(rest_weights) if rest_weights is not None else none
        self.size = max(self.offsets) + 1  # a ring over the last bars: every offset stays distinct
        self.pitch = np.full((rows, self.size), -1, dtype=np.int64)
        self.length = np.full((rows, self.size), -1, dtype=np.int64)  # DURATION token; -1 none yet
        self.time = np.full((rows, self.size), -1, dtype=np.int64)
        self.sounded = np.full((rows, self.size), -1, dtype=np.int64)  # the time a slot last sounded
        low, high = tok.config.pitch_low, tok.config.pitch_high
        primer_notes = primer_notes[primer_notes[:, PROGRAM] != DRUMS]  # a drum hit is no part of the line
        self.first = int(primer_notes[:, ONSET].min(initial=0))  # before the phrase: neither sound nor rest
        heard = primer_notes[primer_notes[:, ONSET] >= primer_notes[:, ONSET].max(initial=0) - self.size]  # the ring's span
        lengths = tok.duration0 + np.searchsorted(tok.durations, heard[:, DURATION]).clip(0, len(tok.durations) - 1)
        everyone = slice(None)
        for (onset, duration, pitch), length in zip(heard[:, [ONSET, DURATION, PITCH]].tolist(), lengths.tolist()):
            if low <= pitch <= high:  # in time order: a later note wins its slot
                slot = onset % self.size
                self.pitch[:, slot], self.time[:, slot], self.length[:, slot] = pitch, onset, length
            self._sound(everyone, onset, duration)
        self.pending = np.zeros(rows, dtype=bool)  # a PITCH was recorded and its DURATION is still to come

    def bias(self, logits: np.ndarray, now: np.ndarray) -> None:
        rows = np.arange(len(now))
        for offset, weight, length_weight in zip(self.offsets, self.weights, self.length_weights):
            then = now - offset
            slot = then % self.size
            heard = (self.time[rows, slot] == then) & (then >= 0)
            if heard.any():
                r = rows[heard]
                logits[r, self.tok.pitch0 + self.pitch[r, slot[heard]] - self.tok.config.pitch_low] += weight
                length = self.length[r, slot[heard]]
                if length_weight and (length >= 0).any():
                    logits[r[length >= 0], length[length >= 0]] += length_weight
        for offset, weight in zip(self.offsets, self.rest_weights):
            then = now - offset
            silent = (then >= self.first) & (self.sounded[rows, then % self.size] != then)
            if weight and silent.any():  # every token that starts a note: a program change is no way round it
                logits[silent, self.tok.program0: self.tok.velocity0] -= weight

    def record(self, tokens: np.ndarray, kinds: np.ndarray, now: np.ndarray) -> None:
        played = np.flatnonzero(kinds == PITCH_T)
        if len(played):
            slot = now[played] % self.size
            self.pitch[played, slot] = self.tok.token_value[tokens[played]]
            self.time[played, slot] = now[played]
            self.length[played, slot] = -1
        self.pending[played] = True
        self.pending[kinds == DRUM_T] = False  # a drum's length is not the line's
        ended = np.flatnonzero((kinds == DURATION_T) & self.pending)
        if len(ended):  # the length of the pitch just recorded at this moment
            slot = now[ended] % self.size
            self.length[ended, slot] = tokens[ended]
            self.pending[ended] = False
            for r, start, steps in zip(ended.tolist(), now[ended].tolist(), self.tok.token_value[tokens[ended]].tolist()):
                self._sound(r, start, steps)

    def _sound(self, rows, onset: int, steps: int) -> None:
        """Mark the steps a note sounds (at most a ring's worth) for `rows`."""
        span = np.arange(onset, onset + min(int(steps), self.size))
        self.sounded[rows, span % self.size] = span


class Opening:
    """Logits added while the piece opens (before step `until`) and not after: a named key's tonic
    triad heard in the first bars establishes the key, and the model, which hears its own earlier
    bars, carries it on; the same logits at every step made a drone of the tonic."""

    def __init__(self, vector: np.ndarray, until: int):
        self.vector, self.until = vector.astype(np.float32), int(until)

    def bias(self, logits: np.ndarray, now: np.ndarray) -> None:
        early = now < self.until
        if early.any():
            logits[early] += self.vector

    def record(self, tokens: np.ndarray, kinds: np.ndarray, now: np.ndarray) -> None:
        pass


class KeyKeeper:
    """A named key kept by what each row has played so far: the pitch classes of the key's scale
    that fall short of their share in its melody profile (Temperley's, theory.MELODY_PROFILES) get up to
    `strength` logits, in proportion to how far short they are; a class at or past its share
    gets none. The key holds without any tone being pushed past its place (the same tonic triad
    logits at every step made a drone: half a tune's notes on the tonic)."""

    def __init__(self, tok: Tokenizer, rows: int, key: int, strength: float, prior_notes: float, floor: float):
        profile = MELODY_PROFILES[key]
        self.tok, self.strength, self.prior_notes = tok, float(strength), float(prior_notes)
        self.target = profile / profile.sum()
        self.kept = self.target >= floor  # the scale's degrees; chromatic tones are never pushed
        self.classes = np.arange(tok.config.pitch_low, tok.config.pitch_high + 1) % 12
        self.counts = np.zeros((rows, 12))

    def bias(self, logits: np.ndarray, now: np.ndarray) -> None:
        share = (self.counts + self.prior_notes * self.target) / (self.counts.sum(1, keepdims=True) + self.prior_notes)
        short = np.clip(1.0 - share / self.target, 0.0, 1.0) * self.kept
        logits[:, self.tok.pitch0: self.tok.pitch0 + len(self.classes)] += (self.strength * short[:, self.classes]).astype(logits.dtype)

    def record(self, tokens: np.ndarray, kinds: np.ndarray, now: np.ndarray) -> None:
        played = np.flatnonzero(kinds == PITCH_T)
        np.add.at(self.counts, (played, self.tok.token_value[tokens[played]] % 12), 1)


def start_state(tok: Tokenizer, rows: int, grid: TempoMap, decoder=None, last_token: int | None = None) -> dict:
    """Per-row grammar state: fresh (the next step feeds BOS) or after a primer, whose decoder
    knows the time and bar; `last_token` is the primer token the next step feeds."""
    ends = np.full((rows, Sampler.MAX_CHORD), -1, dtype=np.int64)  # when the notes sounding end
    if decoder is None:
        time, bar_index, last_type, last_token = 0, -1, int(tok.token_type[tok.bos]), tok.bos
    else:
        time, bar_index, last_type = decoder.time, decoder.bar_index, decoder.last_type
        held = sorted((int(n[0]) + int(n[1]) for n in decoder.notes if int(n[0]) + int(n[1]) > time), reverse=True)
        ends[:, :min(len(held), Sampler.MAX_CHORD)] = held[:Sampler.MAX_CHORD]
        if not held and decoder.notes:  # the primer's last sound: a rest after it counts from there
            ends[:, 0] = max(int(n[0]) + int(n[1]) for n in decoder.notes)
    return {
        "grid": grid,
        "last_token": np.full(rows, last_token, dtype=np.int64),
        "last_type": np.full(rows, last_type, dtype=np.int64),
        "time": np.full(rows, time, dtype=np.int64),
        "bar_index": np.full(rows, bar_index, dtype=np.int64),
        "next_bar": np.full(rows, grid.bar_start(bar_index + 1), dtype=np.int64),
        "bars": np.zeros(rows, dtype=np.int64),
        "chord": np.zeros(rows, dtype=np.int64),  # notes at the current time so far
        "ends": ends,
    }


def chord_tone_bias(tok: Tokenizer, strength: float) -> np.ndarray:
    """(chord values, vocab) additive logits: `strength` on every pitch whose pitch class belongs
    to the chord (rows for "no chord" and "unknown" are zero): the user's chords as a prior on top
    of the model's own conditioning."""
    from . import theory

    table = np.zeros((theory.N_CHORDS, len(tok)), dtype=np.float32)
    pitches = np.arange(tok.config.pitch_low, tok.config.pitch_high + 1)
    for chord in range(theory.NO_CHORD):
        tones = np.isin(pitches % 12, theory.chord_pitch_classes(chord))
        table[chord, tok.pitch0 + np.flatnonzero(tones)] = strength
    return table
