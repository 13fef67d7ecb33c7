"""Rotary frequencies with Llama-3 scaling equal the Hugging Face reference implementation."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.config import RopeScaling
from lmforge.model.positions import rope_inverse_frequencies

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("factor,original", [(8.0, 8192), (32.0, 8192), (4.0, 64)])
def test_llama3_scaling_matches_transformers(factor, original):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": original}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_scaling=scaling, rope_theta=500000.0,
                         max_position_embeddings=4 * original)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    actual = rope_inverse_frequencies(64, 500000.0, RopeScaling(factor, 1.0, 4.0, original))
    torch.testing.assert_close(actual, expected.float(), atol=0, rtol=1e-6)
