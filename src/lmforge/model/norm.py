"""LayerNorm (GPT-2), RMSNorm (Llama) and unit-offset RMSNorm (Gemma), chosen by `config.norm`.

Every norm has `reset_parameters()` giving the identity map, which `Transformer.init_weights` calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) · g, computed in fp32 as Llama does, then cast back to the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class UnitOffsetRMSNorm(RMSNorm):
    """x / rms(x) · (1 + w), all in fp32 before the cast (Gemma): the stored weight is the gain's
    offset from one, so zero is the identity and weight decay pulls towards it."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (1.0 + self.weight.float())).to(x.dtype)


def build_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps)
    kind = UnitOffsetRMSNorm if config.norm == "rmsnorm_unit_offset" else RMSNorm
    return kind(dim, config.norm_eps)
