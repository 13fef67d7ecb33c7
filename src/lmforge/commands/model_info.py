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
    """Parameters, training FLOPs per token, KV-cache size (MHA vs GQA vs MQA vs MLA; what sliding-window
    layers save) and training memory.

    Example:
        lmforge model info --preset gpt2
        lmforge model info --preset llama-3.1-8b --dtype fp16 --json
        lmforge model info --preset gemma-3-270m --context-length 32768
        lmforge model info --config my_model.yaml

    Args:
        preset: A named preset (gpt2, gpt2-medium, gpt3-175b, llama-3.2-1b, tiny-llama, ...).
        config: A YAML or JSON file of ModelConfig fields (a `preset:` key starts from a preset).
        json: Print one JSON object instead of a table.
        dtype: Element type for the KV cache, weights and gradients.
        context_length: Sequence length for attention FLOPs and the whole KV cache (default: the model's).
    """
    from lmforge.bounds import at_least, check_value
    from lmforge.model.accounting import DTYPE_BYTES, attention_variants, model_cost
    from lmforge.model.presets import load_model_config

    if (preset is None) == (config is None):
        raise LmforgeError("give exactly one of --preset NAME or --config FILE")
    check_value("--context-length", context_length, at_least(1))
    model_config = load_model_config(preset if preset is not None else config)
    cost = model_cost(model_config, dtype, context_length)
    variant_configs = attention_variants(model_config)
    variants = {name: model_cost(variant, dtype, context_length) for name, variant in variant_configs.items()}
    context = context_length or model_config.context_length
    if json:
        print(json_module.dumps({
            "name": model_config.name,
            **dataclasses.asdict(cost),
            "kv_cache_dtype": dtype,
            "kv_cache_context_length": context,
            "kv_cache_bytes_per_token_by_attention": {name: v.kv_cache_bytes_per_token for name, v in variants.items()},
            "config": model_config.to_dict(),
        }, indent=2))
        return

    c = model_config
    attention = "MLA" if c.attention == "mla" else ("MHA" if c.n_kv_heads == c.n_heads else "MQA" if c.n_kv_heads == 1 else "GQA")
    features = [name for name, chosen in (("QK-norm", c.qk_norm), ("sandwich norms", c.sandwich_norm),
                                          ("√d_model-scaled embeddings", c.scale_embeddings),
                                          ("tied embeddings", c.tie_embeddings)) if chosen]
    print(f"model            {c.name}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads "
          f"({c.n_kv_heads} kv, head_dim {c.head_dim}), d_ff {c.d_ff}, vocab {c.vocab_size}, context {c.context_length}")
    print(f"architecture     {c.position} positions, {c.norm}, {c.mlp}, {attention} attention"
          + (f", MoE {c.n_experts_per_token}/{c.n_experts} experts (+{c.n_shared_experts} shared)" if c.n_experts else "")
          + "".join(f", {feature}" for feature in features))
    print(f"parameters       {cost.parameters:,} ({_human(cost.parameters)})")
    print(f"non-embedding    {cost.non_embedding_parameters:,} ({_human(cost.non_embedding_parameters)})")
    if c.n_experts:
        print(f"active per token {cost.active_parameters:,} ({_human(cost.active_parameters)})")
    print(f"train FLOPs/tok  {_human(cost.flops_per_token, 'FLOP')} (6·N plus attention at context {context})")
    print(f"memory ({dtype})    weights {_bytes(cost.weight_bytes)}, gradients {_bytes(cost.gradient_bytes)}, "
          f"AdamW state {_bytes(cost.optimizer_bytes)} (fp32 moments)")
    print(f"\nKV cache of one sequence ({dtype}); this model: {attention}")
    n_local = c.layer_kinds.count("local")
    if n_local:
        all_global = c.kv_cache_elements_per_token_per_layer * c.n_layers * DTYPE_BYTES[dtype] * context
        print(f"  {n_local} of {c.n_layers} layers are local (window {c.sliding_window}): together they hold at most "
              f"{_bytes(cost.kv_cache_local_bytes)}, however long the sequence")
        print(f"  {c.n_layers - n_local} global layers add {cost.kv_cache_bytes_per_token:,} bytes per token")
        print(f"  at context {context:,}: {_bytes(cost.kv_cache_bytes)}, against {_bytes(all_global)} "
              f"were every layer global ({all_global / cost.kv_cache_bytes:.1f}× more)")
    print(f"  {'attention':<18}{'elements/layer':>16}{'bytes/token':>14}{f'at context {context:,}':>20}")
    for (name, variant), variant_config in zip(variants.items(), variant_configs.values()):
        per_layer = variant_config.kv_cache_elements_per_token_per_layer
        print(f"  {name:<18}{per_layer:>16,}{variant.kv_cache_bytes_per_token:>14,}{_bytes(variant.kv_cache_bytes):>20}")
