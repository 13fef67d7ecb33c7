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


@pytest.mark.parametrize("preset", ["gpt2", "tiny-mla-moe"])
def test_model_info_table(capsys, preset):
    main(["model", "info", "--preset", preset])
    out = capsys.readouterr().out
    assert "parameters" in out and "MLA" in out and "AdamW" in out
