"""Position information, chosen by `config.position`: learned absolute embeddings (GPT-2) added to
the input, or rotary embeddings (RoFormer; Llama) applied inside attention.

Both modules share one interface, `forward(x, positions) -> (x, ropes)`, where `ropes` maps a layer
kind ("global", "local") to the (cos, sin) pair attention rotates queries and keys with; it is
empty for learned positions. Each kind has its own base and scaling (Gemma 3: local θ = 10k,
global θ = 1M with optional linear scaling).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig, RopeScaling

Rope = tuple[torch.Tensor, torch.Tensor] | None
Ropes = dict[str, tuple[torch.Tensor, torch.Tensor]]


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """θ^(-2i/d) for i < d/2; linear scaling divides them all by `factor`; Llama-3 scaling divides
    wavelengths longer than original_context/low_freq_factor by `factor`, keeps those shorter than
    original_context/high_freq_factor, and smoothly interpolates the band between."""
    inverse = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inverse
    if scaling.kind == "linear":
        return inverse / scaling.factor
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
    """Rotary embedding in the half-split layout (pairs (x_i, x_{i+d/2})), as HF Llama stores q/k.
    cos/sin are [time, dim], or [batch, time, dim] for per-row positions (packed examples)."""
    if cos.dim() == 3 and x.dim() == 4:  # x [batch, heads, time, dim]
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RotaryPositions(nn.Module):
    """Rotary cos/sin for each layer kind in `settings` (kind -> (θ, scaling))."""

    def __init__(self, rotary_dim: int, settings: dict[str, tuple[float, RopeScaling | None]]) -> None:
        super().__init__()
        self.rotary_dim, self.settings = rotary_dim, settings
        for kind, (theta, scaling) in settings.items():
            self.register_buffer(f"{kind}_inverse_frequencies", rope_inverse_frequencies(rotary_dim, theta, scaling),
                                 persistent=False)

    @torch.no_grad()
    def reset_frequencies(self) -> None:
        """Recompute the (non-persistent) frequencies, e.g. after building on the meta device."""
        for kind, (theta, scaling) in self.settings.items():
            getattr(self, f"{kind}_inverse_frequencies").copy_(rope_inverse_frequencies(self.rotary_dim, theta, scaling))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Ropes]:
        ropes = {}
        for kind in self.settings:
            angles = positions.float()[..., None] * getattr(self, f"{kind}_inverse_frequencies")
            angles = torch.cat((angles, angles), dim=-1)
            ropes[kind] = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        return x, ropes


class LearnedPositions(nn.Module):
    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Ropes]:
        return x + self.embedding(positions), {}


def build_positions(config: ModelConfig) -> nn.Module:
    if config.position == "learned":
        return LearnedPositions(config.context_length, config.d_model)
    rotary_dim = config.qk_rope_head_dim if config.attention == "mla" else config.head_dim
    settings = {"global": (config.rope_theta, config.rope_scaling),
                "local": (config.rope_local_theta or config.rope_theta, None)}
    return RotaryPositions(rotary_dim, {kind: settings[kind] for kind in dict.fromkeys(config.layer_kinds)})
