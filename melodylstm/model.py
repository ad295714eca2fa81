"""The model: token embedding -> stacked LSTM -> projection to the vocabulary."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig


class MelodyLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding)
        self.lstm = nn.LSTM(c.embedding, c.hidden, c.layers, batch_first=True,
                            dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        # with tied weights the LSTM output is first projected down to the embedding size
        self.bottleneck = nn.Linear(c.hidden, c.embedding) if c.tie_weights else None
        self.head = nn.Linear(c.embedding if c.tie_weights else c.hidden, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, state=None):
        """tokens (batch, time) -> logits (batch, time, vocab), (h, c)."""
        x = self.drop(self.embed(tokens))
        if x.device.type == "cpu" and cpu_autocast_enabled():
            # oneDNN has no reduced-precision LSTM on most CPUs: the recurrence stays fp32 there,
            # embedding and output layer still run under autocast
            with torch.autocast("cpu", enabled=False):
                out, state = self.lstm(x.float(), state)
        else:
            out, state = self.lstm(x, state)
        out = self.drop(out)
        if self.bottleneck is not None:
            out = self.bottleneck(out)
        return self.head(out), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
