"""The model: token embedding -> stacked LSTM -> projection to the vocabulary."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    embedding: int = 128
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False  # share the embedding with the output layer (fewer parameters)

    def __post_init__(self):
        if not (self.vocab_size > 3 and self.embedding > 0 and self.hidden > 0 and self.layers > 0):
            raise ValueError("model sizes must be positive")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown model settings: {', '.join(sorted(set(data) - known))}")
        return cls(**data)


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
        out, state = self.lstm(self.drop(self.embed(tokens)), state)
        out = self.drop(out)
        if self.bottleneck is not None:
            out = self.bottleneck(out)
        return self.head(out), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
