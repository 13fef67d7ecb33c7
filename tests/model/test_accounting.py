"""FLOPs, KV-cache sizes and memory reported by `model info`."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.model.accounting import model_cost
from lmforge.model.config import ModelConfig
from lmforge.model.presets import preset_config


def test_gpt2_flops_are_six_per_matmul_weight_plus_attention():
    """PaLM appendix B accounting: 6 FLOPs per matmul weight (12·d² a layer, plus the V·d head;
    biases, norms and lookups are not matmuls) + 12·L·d·T for QKᵀ and A·V."""
    config = preset_config("gpt2")
    L, d, V, T = config.n_layers, config.d_model, config.vocab_size, config.context_length
    assert model_cost(config).flops_per_token == 6 * (12 * L * d * d + V * d) + 12 * L * d * T


def test_kv_cache_per_token_follows_deepseek_table():
    """MHA 2·n_h·d_h; GQA 2·n_g·d_h; MQA 2·d_h; MLA d_c + d_h^R — per layer."""
    base = dict(n_layers=3, d_model=128, n_heads=8, vocab_size=50, context_length=16)
    mha = ModelConfig(**base)
    gqa = ModelConfig(**base, n_kv_heads=2)
    mqa = ModelConfig(**base, n_kv_heads=1)
    mla = ModelConfig(**base, attention="mla", kv_lora_rank=64, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    assert model_cost(mha, "fp32").kv_cache_bytes_per_token == 3 * 2 * 8 * 16 * 4
    assert model_cost(gqa, "bf16").kv_cache_bytes_per_token == 3 * 2 * 2 * 16 * 2
    assert model_cost(mqa, "bf16").kv_cache_bytes_per_token == 3 * 2 * 16 * 2
    assert model_cost(mla, "bf16").kv_cache_bytes_per_token == 3 * (64 + 8) * 2


def test_local_layers_bound_the_kv_cache_and_attention_flops():
    """gemma-3-270m: 3 global layers grow with the sequence; 15 local ones hold 511 positions at most."""
    config = preset_config("gemma-3-270m")
    per_position_per_layer = 2 * 1 * 256 * 2  # K and V, 1 kv head of 256, bf16
    cost = model_cost(config, "bf16", context_length=32768)
    assert cost.kv_cache_bytes_per_token == 3 * per_position_per_layer
    assert cost.kv_cache_local_bytes == 15 * 511 * per_position_per_layer
    assert cost.kv_cache_bytes == 3 * per_position_per_layer * 32768 + cost.kv_cache_local_bytes
    short = model_cost(config, "bf16", context_length=100)  # shorter than the window: nothing saved
    assert short.kv_cache_bytes == 18 * per_position_per_layer * 100
    # training = 3 × forward, forward = 2 · positions attended · (d_qk + d_v) · heads; local layers see the window
    attention = 3 * 2 * (3 * 32768 + 15 * 512) * (256 + 256) * 4
    matmuls = model_cost(config, "bf16", context_length=1).flops_per_token - 3 * 2 * 18 * (256 + 256) * 4
    assert cost.flops_per_token == matmuls + attention


def test_moe_active_parameters_count_only_chosen_experts():
    config = preset_config("tiny-mla-moe")
    cost = model_cost(config)
    expert = 3 * config.d_model * config.moe_d_ff  # SwiGLU: gate, up, down
    moe_layers = config.n_layers - config.n_dense_layers
    assert cost.parameters - cost.active_parameters == moe_layers * (config.n_experts - config.n_experts_per_token) * expert


def test_model_info_json_keys(capsys):
    main(["model", "info", "--preset", "llama-3.2-1b", "--json"])
    report = json.loads(capsys.readouterr().out)
    for key in ("parameters", "non_embedding_parameters", "flops_per_token", "kv_cache_bytes_per_token"):
        assert key in report
    assert report["parameters"] == 1_235_814_400
    assert report["kv_cache_bytes_per_token"] == 16 * 2 * 8 * 64 * 2
    by_attention = report["kv_cache_bytes_per_token_by_attention"]
    assert by_attention["MHA"] > by_attention["GQA (8 groups)"] > by_attention["MLA"] > by_attention["MQA"]


@pytest.mark.parametrize("preset", ["gpt2", "tiny-mla-moe", "gemma-3-270m"])
def test_model_info_table(capsys, preset):
    main(["model", "info", "--preset", preset])
    out = capsys.readouterr().out
    assert "parameters" in out and "MLA" in out and "AdamW" in out


def test_model_info_shows_what_local_layers_save(capsys):
    main(["model", "info", "--preset", "gemma-3-270m"])
    out = capsys.readouterr().out
    assert "15 of 18 layers are local (window 512)" in out and "3 global layers add 3,072 bytes per token" in out
    assert "at context 32,768: 103.5 MiB, against 576.0 MiB were every layer global" in out
