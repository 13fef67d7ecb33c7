"""Position information, chosen by `config.position`: learned absolute embeddings (GPT-2) added to
the input, or rotary embeddings (RoFormer; Llama) applied inside attention.

Both modules share one interface, `forward(x, positions) -> (x, rope)`, where `rope` is the
(cos, sin) pair attention rotates queries and keys with, or None.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig, RopeScaling

Rope = tuple[torch.Tensor, torch.Tensor] | None


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """θ^(-2i/d) for i < d/2, with Llama-3 scaling when given: wavelengths longer than
    original_context/low_freq_factor are divided by `factor`, shorter than
    original_context/high_freq_factor kept, and the band between smoothly interpolated."""
    inverse = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inverse
    low_wavelength = scaling.original_context_length / scaling.low_freq_factor
    high_wavelength = scaling.original_context_length / scaling.high_freq_factor
    wavelength = 2 * math.pi / inverse
    smooth = (scaling.original_context_length / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    interpolated = (1 - smooth) * inverse / scaling.factor + smooth * inverse
    return torch.where(
        wavelength > low_wavelength,
        inverse / scaling.factor,
        torch.where(wavelength < high_wavelength, inverse, interpolated),
    )


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout (pairs (x_i, x_{i+d/2})), as HF Llama stores q/k."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RotaryPositions(nn.Module):
    def __init__(self, rotary_dim: int, theta: float, scaling: RopeScaling | None) -> None:
        super().__init__()
        self.rotary_dim, self.theta, self.scaling = rotary_dim, theta, scaling
        self.register_buffer("inverse_frequencies", rope_inverse_frequencies(rotary_dim, theta, scaling), persistent=False)

    @torch.no_grad()
    def reset_frequencies(self) -> None:
        """Recompute the (non-persistent) frequencies, e.g. after building on the meta device."""
        self.inverse_frequencies.copy_(rope_inverse_frequencies(self.rotary_dim, self.theta, self.scaling))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        angles = positions.float()[:, None] * self.inverse_frequencies[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return x, (angles.cos().to(x.dtype), angles.sin().to(x.dtype))


class LearnedPositions(nn.Module):
    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x + self.embedding(positions), None


def build_positions(config: ModelConfig) -> nn.Module:
    if config.position == "learned":
        return LearnedPositions(config.context_length, config.d_model)
    rotary_dim = config.qk_rope_head_dim if config.attention == "mla" else config.head_dim
    return RotaryPositions(rotary_dim, config.rope_theta, config.rope_scaling)
