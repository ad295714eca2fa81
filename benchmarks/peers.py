"""The peers `quality.py` sets beside `melodylstm train`: what a user would write without melodylstm.

Both read MidiTok TSD tokens, train for the same CPU minutes on the same training files, and are
scored in bits per note on the same held-out files (nats of every token of every file, divided by
melodylstm's note count of those files), so they are compared on the music, whatever the tokens.

* `lstm_loop_bits`: the 40-line loop of issue #12 (nn.LSTM 2x256, AdamW at a constant 2e-3,
  random 128-token windows); each held-out file is run whole, state carried.
* `gpt_bits`: a small GPT (issue #20): causal self-attention, learned positions, AdamW, a linear
  warm-up and a cosine decay fitted to the time budget. Two sizes that suit a CPU budget are each
  trained for the full budget on 95% of the training files; the one with the lower loss on the
  other 5% is scored on the held-out files. A held-out file longer than the context is scored in
  sliding windows (`causal_logprobs`), so every token is predicted from past tokens only.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)


def tsd_tokens(files):
    """MidiTok TSD ids of each file, as BOS ... EOS; and the vocabulary size."""
    import miditok
    import symusic

    tok = miditok.TSD(miditok.TokenizerConfig(use_programs=True, num_velocities=32))
    seqs = []
    for f in files:
        ids = tok.encode(symusic.Score(f.path)).ids
        seqs.append(np.array([tok["BOS_None"]] + list(ids) + [tok["EOS_None"]], dtype=np.int64))
    return seqs, len(tok)


# ---------------------------------------------------------------- the plain LSTM loop

def lstm_loop_bits(train, val, minutes: float, seed: int = 0, threads: int = 0) -> dict:
    """The 40-line loop a user would write; bits/note on the validation files, state carried."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_seqs, vocab = tsd_tokens(train)
    val_seqs, _ = tsd_tokens(val)
    stream = torch.from_numpy(np.concatenate(train_seqs))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.head = nn.Embedding(vocab, 128), nn.LSTM(128, 256, 2, batch_first=True, dropout=0.2), nn.Linear(256, vocab)

        def forward(self, x, state=None):
            y, state = self.lstm(self.emb(x), state)
            return self.head(y), state

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    deadline, steps, g = time.perf_counter() + minutes * 60, 0, torch.Generator().manual_seed(seed)
    while time.perf_counter() < deadline:
        starts = torch.randint(0, len(stream) - 129, (32,), generator=g)
        batch = stream[starts[:, None] + torch.arange(129)]
        logits, _ = net(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
    net.eval()
    nats = 0.0
    with torch.no_grad():
        for seq in val_seqs:
            x = torch.from_numpy(seq)[None]
            logits, _ = net(x[:, :-1])
            nats += float(nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
    notes = sum(r.notes for r in val)
    return {"bits_per_note": nats / LN2 / notes, "steps": steps}


# ---------------------------------------------------------------- the small GPT

@dataclass(frozen=True)
class GPTSize:
    name: str
    layers: int
    dim: int
    heads: int
    context: int
    batch: int
    lr: float  # peak learning rate


# Two sizes a CPU budget affords, 1,024 tokens a step each: deep and narrow on a long context, or
# shallow and wide on a shorter one (0.8M and 1.6M weights besides the embeddings). Peak learning
# rates from 150-step runs on the tunes' training files (inner validation, nats/token): 2x256 at
# 1e-3 / 1.5e-3 / 3e-3: 0.73 / 0.72 / 0.78; 4x128 (context 128, 8 windows) at 2e-3 / 4e-3: 0.79 / 0.82.
GPT_SIZES = (GPTSize("4x128", 4, 128, 4, 256, 4, 2e-3),
             GPTSize("2x256", 2, 256, 4, 128, 8, 1.5e-3))
WARMUP = 0.05        # fraction of the budget spent warming up linearly
FINAL_LR = 0.1       # the cosine ends at this fraction of the peak, at the deadline
WEIGHT_DECAY = 0.1   # on matrices only
DROPOUT = 0.1
INNER_VAL = 0.05     # fraction of the training files held out to choose the size
CHECKS = (0.6, 0.7, 0.8, 0.9, 1.0)  # budget fractions where the inner validation keeps the best weights
CHECK_TOKENS = 4096  # targets scored at those checks (the first files of the inner validation)


def make_gpt(vocab: int, size: GPTSize, dropout: float = DROPOUT):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(size.dim), nn.LayerNorm(size.dim)
            self.qkv, self.proj = nn.Linear(size.dim, 3 * size.dim), nn.Linear(size.dim, size.dim)
            self.mlp = nn.Sequential(nn.Linear(size.dim, 4 * size.dim), nn.GELU(), nn.Linear(4 * size.dim, size.dim), nn.Dropout(dropout))
            self.drop = nn.Dropout(dropout)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, size.heads, d // size.heads).permute(2, 0, 3, 1, 4)
            # is_causal: position i attends to positions <= i only
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout if self.training else 0.0)
            x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
            return x + self.mlp(self.norm2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, size.dim), nn.Embedding(size.context, size.dim)
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.Sequential(*[Block() for _ in range(size.layers)])
            self.norm, self.head = nn.LayerNorm(size.dim), nn.Linear(size.dim, vocab, bias=False)
            self.head.weight = self.tok.weight  # tied input and output embeddings
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * size.layers) if name.endswith("proj.weight") else 0.02)

        def forward(self, x):  # (batch, time <= context) ids -> (batch, time, vocab) logits
            h = self.drop(self.tok(x) + self.pos(torch.arange(x.shape[1])))
            return self.head(self.norm(self.blocks(h)))

    return GPT()


def causal_logprobs(model, seq, context: int, stride: int | None = None, batch: int = 32) -> np.ndarray:
    """Natural log-probability of every token of seq after the first, each from earlier tokens only.

    Windows of `context` tokens end at context, context + stride, context + 2 stride, ...; the
    first window scores all its targets, each later one its last `stride` (so every target after
    the first window sees at least context - stride earlier tokens, 3/4 of the context by
    default). The windows do not depend on the sequence's length (the last one is padded at the
    end, and the model is causal), so a token's figure is the same however the file continues.
    """
    import torch

    stride = stride or context // 4
    x, y = np.asarray(seq[:-1]), np.asarray(seq[1:])
    n = len(x)
    ends = [context]
    while ends[-1] < n:
        ends.append(ends[-1] + stride)
    padded = np.concatenate([x, np.zeros(max(0, ends[-1] - n), dtype=x.dtype)])
    out = np.zeros(n)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ends), batch):
            chunk = ends[i:i + batch]
            windows = torch.from_numpy(np.stack([padded[e - context:e] for e in chunk]))
            logp = torch.log_softmax(model(windows).double(), -1).numpy()
            for row, e in enumerate(chunk):
                first = e - context if e == context else e - stride   # targets [first, min(e, n))
                last = min(e, n)
                if first >= last:
                    continue
                cols = np.arange(first, last) - (e - context)
                out[first:last] = logp[row, cols, y[first:last]]
    return out


def train_gpt(seqs, vocab: int, size: GPTSize, minutes: float, check_seqs=(), seed: int = 0, steps: int | None = None):
    """Train on random windows of the concatenated files for `minutes` (or exactly `steps` steps:
    for tests). The learning rate warms up linearly over the first WARMUP of the budget, then
    decays along a cosine that reaches FINAL_LR x peak when the budget ends. At the CHECKS
    fractions, the nats/token on check_seqs (capped at CHECK_TOKENS targets) keep the best weights.
    Returns (model, info)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = make_gpt(vocab, size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=size.lr, betas=(0.9, 0.95))
    stream = torch.from_numpy(np.concatenate(seqs))
    g = torch.Generator().manual_seed(seed)
    checks = list(CHECKS) if check_seqs else []
    best = (math.inf, None, 0)  # nats/token, weights, step
    started, step = time.perf_counter(), 0

    def progress():
        if steps is not None:
            return step / steps if steps else 1.0
        return (time.perf_counter() - started) / (minutes * 60)

    while progress() < 1:
        f = progress()
        lr = size.lr * (f / WARMUP if f < WARMUP else FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * (f - WARMUP) / (1 - WARMUP))))
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        starts = torch.randint(0, len(stream) - size.context - 1, (size.batch,), generator=g)
        batch = stream[starts[:, None] + torch.arange(size.context + 1)]
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if checks and progress() >= checks[0]:
            checks = [c for c in checks if c > progress()]  # one check for every fraction passed
            nats = check_nats(model, check_seqs, size.context)
            if nats < best[0]:
                best = (nats, copy.deepcopy(model.state_dict()), step)
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return model, {"steps": step, "check_nats_per_token": best[0], "best_step": best[2]}


def check_nats(model, seqs, context: int, max_targets: int = CHECK_TOKENS) -> float:
    """Mean nats/token over the first max_targets targets of seqs (files in order)."""
    total, count = 0.0, 0
    for seq in seqs:
        if count >= max_targets:
            break
        seq = seq[:max_targets - count + 1]
        lp = causal_logprobs(model, seq, context)
        total, count = total - lp.sum(), count + len(lp)
    return total / max(count, 1)


def inner_split(train):
    """95% / 5% of the training files by content hash (another slice of the hash than the
    held-out split's), at least one file held out: the peer's own validation."""
    ranked = sorted(train, key=lambda r: int(r.content_hash[8:16], 16))
    held = max(1, round(INNER_VAL * len(train)))
    return ranked[held:], ranked[:held]


def gpt_bits(train, val, minutes: float, seed: int = 0, threads: int = 0, sizes=GPT_SIZES, steps: int | None = None) -> dict:
    """Each size trained for the full budget; the better on the inner validation is scored on val.
    train, val: melodylstm's file results (.path, .notes, .content_hash)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    fit, inner = inner_split(train)
    fit_seqs, vocab = tsd_tokens(fit)
    inner_seqs, _ = tsd_tokens(inner)
    val_seqs, _ = tsd_tokens(val)
    tried, best = {}, None
    for size in sizes:
        model, info = train_gpt(fit_seqs, vocab, size, minutes, inner_seqs, seed=seed, steps=steps)
        tried[size.name] = info
        if best is None or info["check_nats_per_token"] < best[2]["check_nats_per_token"]:  # (inf when untrained)
            best = (size, model, info)
    size, model, info = best
    nats = -sum(causal_logprobs(model, seq, size.context).sum() for seq in val_seqs)
    notes = sum(r.notes for r in val)
    return {"bits_per_note": nats / LN2 / notes, "steps": info["steps"], "size": size.name, "tried": tried}
