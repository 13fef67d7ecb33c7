"""Token embeddings, chosen by `config.scale_embeddings`: plain (GPT-2, Llama) or multiplied by
√d_model (Gemma), which puts the embeddings on the scale of the residual stream they start."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig


class ScaledEmbedding(nn.Embedding):
    """Embedding rows times √d_model, the factor first rounded to the weight dtype as Gemma does
    (bf16: √640 = 25.25), so a model trained that way sees the numbers it was trained on."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__(vocab_size, d_model)
        scale = torch.tensor(math.sqrt(d_model), dtype=torch.float32, device="cpu")  # not meta, even on meta
        self.scales = {dtype: scale.to(dtype).item() for dtype in (torch.float32, torch.bfloat16, torch.float16)}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens) * self.scales.get(self.weight.dtype, self.scales[torch.float32])


def build_embedding(config: ModelConfig) -> nn.Embedding:
    kind = ScaledEmbedding if config.scale_embeddings else nn.Embedding
    return kind(config.vocab_size, config.d_model)
