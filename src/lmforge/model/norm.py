"""LayerNorm (GPT-2) and RMSNorm (Llama), chosen by `config.norm`."""

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
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def build_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "layernorm":
        return nn.LayerNorm(dim, eps=config.norm_eps)
    return RMSNorm(dim, config.norm_eps)
