"""A smoothed n-gram model over token ids (interpolated Kneser-Ney): the baseline every
evaluation reports, so it is clear how much the LSTM adds.

n-grams are packed into int64 keys (token ids are < 2**10, so up to order 6 fits) and counted
with numpy; a probability is a few binary searches per order."""
from __future__ import annotations

import math

import numpy as np


class NGramModel:
    def __init__(self, vocab_size: int, order: int = 4, bos: int = 1):
        if not 1 <= order <= 6:
            raise ValueError("n-gram order must be 1..6")
        self.vocab, self.order, self.bos = vocab_size, order, bos

    def _pad(self, seq) -> np.ndarray:
        # extra BOS tokens give every position a full-length context
        return np.concatenate([np.full(self.order - 1, self.bos, dtype=np.int64), np.asarray(seq, dtype=np.int64)])

    def _grams(self, padded: np.ndarray, k: int) -> np.ndarray:
        """Keys of all k-grams ending at positions order-1 .. end (one per predicted token)."""
        end = len(padded)
        start = self.order - 1
        key = np.zeros(end - start, dtype=np.int64)
        for i in range(k):
            key = key * self.vocab + padded[start - (k - 1) + i: end - (k - 1) + i]
        return key

    def fit(self, sequences) -> "NGramModel":
        """sequences: token arrays (each BOS ... EOS); the first token of each is context only."""
        grams = {k: [] for k in range(1, self.order + 1)}
        for seq in sequences:
            padded = self._pad(seq)
            for k in range(1, self.order + 1):
                grams[k].append(self._grams(padded, k)[1:])  # [1:]: the sequence's own BOS is never predicted
        self.tables = []
        top = np.concatenate(grams[self.order]) if grams[self.order] else np.zeros(0, dtype=np.int64)
        keys, counts = np.unique(top, return_counts=True)
        levels = {self.order: (keys, counts)}
        for k in range(self.order - 1, 0, -1):  # continuation counts: distinct left extensions
            higher_keys = levels[k + 1][0]
            lower = higher_keys % (self.vocab ** k)
            levels[k] = np.unique(lower, return_counts=True)
        for k in range(1, self.order + 1):
            keys, counts = levels[k]
            n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
            discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
            contexts = keys // self.vocab
            ctx_keys, ctx_index = np.unique(contexts, return_inverse=True)
            ctx_total = np.bincount(ctx_index, weights=counts).astype(np.float64)
            ctx_types = np.bincount(ctx_index).astype(np.float64)
            self.tables.append((keys, counts.astype(np.float64), discount, ctx_keys, ctx_total, ctx_types))
        return self

    def token_log_probs(self, seq) -> np.ndarray:
        """Natural-log probability of every token after the first."""
        padded = self._pad(seq)
        prob = np.full(len(padded) - self.order, 1.0 / self.vocab)
        for k, (keys, counts, d, ctx_keys, ctx_total, ctx_types) in enumerate(self.tables, start=1):
            gram = self._grams(padded, k)[1:]
            ctx = gram // self.vocab
            ci = np.clip(np.searchsorted(ctx_keys, ctx), 0, max(len(ctx_keys) - 1, 0))
            seen_ctx = (len(ctx_keys) > 0) & (ctx_keys[ci] == ctx) if len(ctx_keys) else np.zeros(len(ctx), bool)
            gi = np.clip(np.searchsorted(keys, gram), 0, max(len(keys) - 1, 0))
            count = np.where((keys[gi] == gram) if len(keys) else False, counts[gi] if len(keys) else 0.0, 0.0)
            total = np.where(seen_ctx, ctx_total[ci] if len(ctx_keys) else 1.0, 1.0)
            types = np.where(seen_ctx, ctx_types[ci] if len(ctx_keys) else 0.0, 0.0)
            interpolated = np.maximum(count - d, 0.0) / total + d * types / total * prob
            prob = np.where(seen_ctx, interpolated, prob)
        return np.log(np.maximum(prob, 1e-300))

    def nll(self, sequences) -> tuple[float, int]:
        """(total nats, number of predicted tokens) over sequences."""
        total, count = 0.0, 0
        for seq in sequences:
            lp = self.token_log_probs(seq)
            total -= float(lp.sum())
            count += len(lp)
        return total, count

    def nats_per_token(self, sequences) -> float:
        total, count = self.nll(sequences)
        return total / max(count, 1) if count else math.nan
