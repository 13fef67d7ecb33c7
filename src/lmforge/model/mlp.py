"""Dense feed-forward blocks, chosen by `config.mlp`: GELU (GPT-2, tanh approximation), or a gated
unit (Shazeer 2020) with a SiLU gate (SwiGLU; Llama) or a tanh-GELU gate (GeGLU; Gemma)."""

from __future__ import annotations

import functools

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


class GatedMLP(nn.Module):
    """down(activation(gate(x)) · up(x))."""

    def __init__(self, d_model: int, d_ff: int, bias: bool, activation) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation
        self.fused_gate_up = None  # `lmforge.quant`: gate and up from one integer matmul, while these are its layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gate_up is not None and self.fused_gate_up.layers == (self.gate_proj, self.up_proj):
            gate, up = self.fused_gate_up(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.activation(gate) * up)


_GATES = {"swiglu": F.silu, "geglu": functools.partial(F.gelu, approximate="tanh")}


def build_mlp(config: ModelConfig, d_ff: int | None = None) -> nn.Module:
    d_ff = d_ff or config.d_ff
    if config.mlp == "gelu":
        return GeluMLP(config.d_model, d_ff, config.mlp_bias)
    return GatedMLP(config.d_model, d_ff, config.mlp_bias, _GATES[config.mlp])
