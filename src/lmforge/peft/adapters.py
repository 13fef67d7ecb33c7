"""Bottleneck adapters (Houlsby et al. 2019): after the attention and after the feed-forward of every
block, h ← h + up(activation(down(h))), a d_model → size → d_model detour with its own residual.
The up-projection starts at zero, so training starts from the base model's function.

Each adapter is a submodule of the layer it follows (`blocks.0.attention.adapter.down.weight`),
applied to that layer's output by a forward hook; the base parameters keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from lmforge.bounds import Bound, at_least, between, check_fields
from lmforge.model.transformer import Transformer

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass
class AdapterConfig:
    """The bottleneck's width and nonlinearity: the `--adapter.*` options."""

    size: int = 64
    """Width of the bottleneck."""
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    """Nonlinearity between the down- and the up-projection."""
    dropout: float = 0.0
    """Dropout after the nonlinearity, during training."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"size": at_least(1), "dropout": between(0, 1, high_open=True)}

    def __post_init__(self) -> None:
        check_fields(self, "--adapter.{}")


class Bottleneck(nn.Module):
    def __init__(self, d_model: int, config: AdapterConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, config.size, device=device, dtype=dtype)
        self.activation = _ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.Linear(config.size, d_model, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.dropout(self.activation(self.down(h))))


def owns(name: str) -> bool:
    """True for the name of a parameter the adapters added."""
    return ".adapter." in name


def _through_adapter(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return layer.adapter(output)


def apply_adapters(model: Transformer, config: AdapterConfig) -> None:
    """An adapter after each block's attention and feed-forward (dense or mixture of experts)."""
    weight = model.token_embedding.weight  # (the output layer may be quantized: codes, no weight)
    for block in model.blocks:
        for layer in (block.attention, block.ffn):
            layer.adapter = Bottleneck(model.config.d_model, config, weight.device, weight.dtype)
            layer.register_forward_hook(_through_adapter)
