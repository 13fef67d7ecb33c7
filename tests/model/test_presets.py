"""Preset parameter counts are the published ones (DESIGN.md §4), computed without allocating."""

from __future__ import annotations

import re

import pytest

from lmforge.model.accounting import model_cost
from lmforge.model.presets import PRESETS, preset_config

EXACT = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-3.2-1b": 1_235_814_400,
    # Hugging Face's Gemma3ForCausalLM from the published configs (tests/interop/test_hf_gemma3.py builds it)
    "gemma-3-270m": 268_098_176,
    "gemma-3-1b": 999_885_952,
}


@pytest.mark.parametrize("name,count", EXACT.items())
def test_exact_parameter_counts(name, count):
    assert model_cost(preset_config(name)).parameters == count


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("gpt3-")])
def test_gpt3_within_two_percent_of_its_name(name):
    number, unit = re.match(r"gpt3-([\d.]+)([mb])", name).groups()
    nominal = float(number) * (1e6 if unit == "m" else 1e9)
    config = preset_config(name)
    assert config.context_length == 2048 and config.vocab_size == 50257
    assert abs(model_cost(config).parameters - nominal) / nominal < 0.02


def test_llama_presets_shapes():
    one, three, eight = (preset_config(n) for n in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"))
    assert (one.n_layers, one.d_model, one.n_heads, one.n_kv_heads, one.context_length) == (16, 2048, 32, 8, 131072)
    assert one.tie_embeddings and three.tie_embeddings and not eight.tie_embeddings
    assert abs(model_cost(three).parameters - 3.21e9) / 3.21e9 < 0.01
    assert abs(model_cost(eight).parameters - 8.03e9) / 8.03e9 < 0.01


def test_building_a_large_preset_allocates_nothing():
    import tracemalloc

    tracemalloc.start()
    model_cost(preset_config("gpt3-175b"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200 * 1024**2  # 175B parameters would be 700 GB in fp32


def test_gemma_presets_shapes():
    small, large = preset_config("gemma-3-270m"), preset_config("gemma-3-1b")
    assert (small.n_layers, small.d_model, small.d_ff) == (18, 640, 2048)
    assert (large.n_layers, large.d_model, large.d_ff) == (26, 1152, 6912)
    for config in (small, large):
        assert (config.n_heads, config.n_kv_heads, config.head_dim, config.vocab_size) == (4, 1, 256, 262144)
        assert config.sliding_window == 512 and config.tie_embeddings
        five_to_one = (["local"] * 5 + ["global"]) * (config.n_layers // 6) + ["local"] * (config.n_layers % 6)
        assert config.layer_kinds == five_to_one
