"""`lmforge model info`: what a model configuration costs."""

from __future__ import annotations

import dataclasses
import json as json_module
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError


def _human(count: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if abs(count) < 1000 or suffix == "P":
            return f"{count:,.0f}{unit}" if suffix == "" else f"{count:.2f} {suffix}{unit}"
        count /= 1000
    return str(count)


def _bytes(count: float) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or suffix == "TiB":
            return f"{count:.1f} {suffix}" if suffix != "B" else f"{count:.0f} B"
        count /= 1024
    return str(count)


def info(
    *,
    preset: str | None = None,
    config: Path | None = None,
    json: bool = False,
    dtype: Literal["fp32", "bf16", "fp16", "fp8"] = "bf16",
    context_length: int | None = None,
) -> None:
    """Parameters, training FLOPs per token, KV-cache size (MHA vs GQA vs MQA vs MLA) and training memory.

    Example:
        lmforge model info --preset gpt2
        lmforge model info --preset llama-3.1-8b --dtype fp16 --json
        lmforge model info --config my_model.yaml

    Args:
        preset: A named preset (gpt2, gpt2-medium, gpt3-175b, llama-3.2-1b, tiny-llama, ...).
        config: A YAML or JSON file of ModelConfig fields (a `preset:` key starts from a preset).
        json: Print one JSON object instead of a table.
        dtype: Element type for the KV cache, weights and gradients.
        context_length: Context over which attention FLOPs are counted (default: the model's).
    """
    from lmforge.bounds import at_least, check_value
    from lmforge.model.accounting import attention_variants, model_cost
    from lmforge.model.config import load_model_config

    if (preset is None) == (config is None):
        raise LmforgeError("give exactly one of --preset NAME or --config FILE")
    check_value("--context-length", context_length, at_least(1))
    model_config = load_model_config(preset if preset is not None else config)
    cost = model_cost(model_config, dtype, context_length)
    variants = {
        name: model_cost(variant, dtype, context_length) for name, variant in attention_variants(model_config).items()
    }
    if json:
        print(json_module.dumps({
            "name": model_config.name,
            **dataclasses.asdict(cost),
            "kv_cache_dtype": dtype,
            "kv_cache_bytes_per_token_by_attention": {name: v.kv_cache_bytes_per_token for name, v in variants.items()},
            "config": model_config.to_dict(),
        }, indent=2))
        return

    c = model_config
    attention = "MLA" if c.attention == "mla" else ("MHA" if c.n_kv_heads == c.n_heads else "MQA" if c.n_kv_heads == 1 else "GQA")
    print(f"model            {c.name}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads "
          f"({c.n_kv_heads} kv, head_dim {c.head_dim}), d_ff {c.d_ff}, vocab {c.vocab_size}, context {c.context_length}")
    print(f"architecture     {c.position} positions, {c.norm}, {c.mlp}, {attention} attention"
          + (f", MoE {c.n_experts_per_token}/{c.n_experts} experts (+{c.n_shared_experts} shared)" if c.n_experts else "")
          + (", tied embeddings" if c.tie_embeddings else ""))
    print(f"parameters       {cost.parameters:,} ({_human(cost.parameters)})")
    print(f"non-embedding    {cost.non_embedding_parameters:,} ({_human(cost.non_embedding_parameters)})")
    if c.n_experts:
        print(f"active per token {cost.active_parameters:,} ({_human(cost.active_parameters)})")
    print(f"train FLOPs/tok  {_human(cost.flops_per_token, 'FLOP')} (6·N plus attention at context {context_length or c.context_length})")
    print(f"memory ({dtype})    weights {_bytes(cost.weight_bytes)}, gradients {_bytes(cost.gradient_bytes)}, "
          f"AdamW state {_bytes(cost.optimizer_bytes)} (fp32 moments)")
    print(f"\nKV cache per token ({dtype}); this model: {attention}")
    print(f"  {'attention':<18}{'elements/layer':>16}{'bytes/token':>14}{'at full context':>18}")
    for name, variant in variants.items():
        per_layer = variant.kv_cache_elements_per_token // c.n_layers
        full = variant.kv_cache_bytes_per_token * c.context_length
        print(f"  {name:<18}{per_layer:>16,}{variant.kv_cache_bytes_per_token:>14,}{_bytes(full):>18}")
