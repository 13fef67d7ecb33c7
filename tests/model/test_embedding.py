"""Gemma's √d_model embedding scale, rounded to the weight dtype as Hugging Face does."""

from __future__ import annotations

import math

import torch

from lmforge.model.embedding import ScaledEmbedding


def test_scale_is_rounded_to_the_weight_dtype():
    embedding = ScaledEmbedding(10, 640)
    tokens = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(embedding(tokens), embedding.weight[tokens] * math.sqrt(640))
    embedding = embedding.to(torch.bfloat16)
    assert embedding.scales[torch.bfloat16] == 25.25  # √640 = 25.298 is not a bf16 number
    assert torch.equal(embedding(tokens), embedding.weight[tokens] * torch.tensor(25.25, dtype=torch.bfloat16))
