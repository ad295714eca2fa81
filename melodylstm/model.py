"""The model: token embedding -> stacked LSTM -> projection to the vocabulary."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import SUMMED, ModelConfig


class MelodyLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding)
        # one small embedding per control, concatenated with the token embedding (Performance RNN's
        # way), or one of the token embedding's size added to it (SUMMED)
        self.control_embed = nn.ModuleDict({name: nn.Embedding(values, c.control_size(dim)) for name, values, dim in c.controls})
        summed = [name for name, _, dim in c.controls if dim == SUMMED]
        for name in summed:  # together as loud as the token's own embedding at the start
            nn.init.normal_(self.control_embed[name].weight, std=len(summed) ** -0.5)
        self.lstm = nn.LSTM(c.input_size, c.hidden, c.layers, batch_first=True,
                            dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        # with tied weights the LSTM output is first projected down to the embedding size
        self.bottleneck = nn.Linear(c.hidden, c.embedding) if c.tie_weights else None
        self.head = nn.Linear(c.embedding if c.tie_weights else c.hidden, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, state=None, controls: torch.Tensor | None = None):
        """tokens (batch, time), controls (batch, time, n controls) in the config's order
        -> logits (batch, time, vocab), (h, c)."""
        x = self.embed(tokens)
        if self.config.controls:
            if controls is None:
                raise ValueError("this model needs its control inputs (use unknown values to leave them out)")
            side = []
            for i, ((_, _, dim), emb) in enumerate(zip(self.config.controls, self.control_embed.values())):
                if dim == SUMMED:
                    x = x + emb(controls[..., i])
                else:
                    side.append(emb(controls[..., i]))
            x = torch.cat([x] + side, dim=-1)
        x = self.drop(x)
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

    def set_dropout(self, p: float) -> None:
        """Change dropout mid-training (training switches it on once the model starts memorising)."""
        self.config = replace(self.config, dropout=p)
        self.drop.p = p
        self.lstm.dropout = p if self.config.layers > 1 else 0.0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()
