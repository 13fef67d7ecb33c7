"""Incremental decoding with the KV cache equals a full forward pass, for every attention variant,
local (sliding-window) layers decoding far past their window included."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import SlidingKVCache
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer

BASE = dict(n_layers=2, d_model=64, n_heads=4, vocab_size=100, context_length=64)
VARIANTS = {
    "mha-learned": dataclasses.asdict(preset_config("tiny-gpt2")),
    "mha-rope": dict(BASE),
    "gqa": dict(BASE, n_kv_heads=2),
    "mqa": dict(BASE, n_kv_heads=1),
    "mla": dict(BASE, attention="mla", kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12),
    "mla-q-lora": dict(BASE, attention="mla", kv_lora_rank=24, q_lora_rank=32, qk_rope_head_dim=8,
                       qk_nope_head_dim=16, v_head_dim=16),
    "moe": dict(BASE, n_kv_heads=2, n_experts=4, n_experts_per_token=2, n_shared_experts=1, moe_d_ff=32),
    "mla-moe": dataclasses.asdict(preset_config("tiny-mla-moe")),
    "gemma": dataclasses.asdict(preset_config("tiny-gemma")),  # window 8: the 24 positions run far past it
    "all-local": dict(BASE, n_kv_heads=2, sliding_window=5),
    "mla-local": dict(BASE, attention="mla", kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
                      sliding_window=6, layer_types=["local", "global"]),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_full_forward(name):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**VARIANTS[name])).eval()
    tokens = torch.randint(0, 100, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=2, max_length=24)
        # A prompt, a chunk continuing it (needs the offset mask), then single tokens.
        pieces = [model(tokens[:, :9], cache), model(tokens[:, 9:14], cache)]
        pieces += [model(tokens[:, i:i + 1], cache) for i in range(14, 24)]
    assert cache[0].length == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_mla_caches_only_latent_and_rope_key():
    config = ModelConfig(**VARIANTS["mla"])
    cache = Transformer(config).new_cache(batch_size=1, max_length=10)
    per_token = sum(buffer.shape[-1] for buffer in cache[0].buffers)
    assert per_token == config.kv_lora_rank + config.qk_rope_head_dim == config.kv_cache_elements_per_token_per_layer


def test_cache_overflow_is_an_error():
    model = Transformer(ModelConfig(**VARIANTS["gqa"])).eval()
    cache = model.new_cache(1, max_length=4)
    with torch.no_grad(), pytest.raises(ValueError, match="holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


def test_local_layers_cache_only_their_window():
    """A long generation costs memory for the global layers only."""
    config = preset_config("tiny-gemma")
    model = Transformer(config).eval()
    cache = model.new_cache(batch_size=1, max_length=config.context_length)
    for kind, layer in zip(config.layer_kinds, cache):
        held = layer.buffers[0].shape[-2]
        assert (isinstance(layer, SlidingKVCache), held) == ((True, config.sliding_window - 1) if kind == "local"
                                                             else (False, config.context_length))
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 40)), cache)
    assert all(layer.length == 40 for layer in cache)
