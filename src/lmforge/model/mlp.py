"""Dense feed-forward blocks, chosen by `config.mlp`: GELU (GPT-2, tanh approximation) or SwiGLU
(Shazeer 2020; Llama)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_mlp(config: ModelConfig, d_ff: int | None = None) -> nn.Module:
    kind = GeluMLP if config.mlp == "gelu" else SwiGLU
    return kind(config.d_model, d_ff or config.d_ff, config.mlp_bias)
