"""What a configuration costs: parameters, training FLOPs per token, KV-cache and training memory.

The model is built on the meta device, so even gpt3-175b is counted exactly without allocating.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.moe import MoE
from lmforge.model.transformer import Transformer

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass
class ModelCost:
    parameters: int
    non_embedding_parameters: int
    active_parameters: int  # per token: only the chosen experts of a MoE count
    flops_per_token: int  # training (forward + backward = 3 × forward), attention included
    # What each further token of a sequence adds, over the global layers (every layer, where none is local).
    kv_cache_elements_per_token: int
    kv_cache_bytes_per_token: int
    # Local (sliding-window) layers hold at most sliding_window - 1 positions each, whatever the length.
    kv_cache_local_bytes: int  # their whole cache at the context length
    kv_cache_bytes: int  # the whole cache of one sequence at the context length, every layer
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int  # AdamW: two fp32 moments per parameter


def meta_model(config: ModelConfig) -> Transformer:
    with torch.device("meta"):
        return Transformer(config)


def _matmul_parameters(model: Transformer) -> int:
    """Weights that multiply every token's activations once per forward pass (routed experts
    scaled by the fraction of them a token uses); embedding lookups are not matmuls, the head is."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel()
        elif isinstance(module, MoE):
            routed = sum(p.numel() for p in module.experts.parameters() if p.dim() == 2)
            total -= routed  # counted above as Linear layers; keep only the active share
            total += routed * module.top_k // len(module.experts)
    return total


def attention_flops_per_token(config: ModelConfig, context_length: int) -> int:
    """Forward FLOPs of QKᵀ and A·V for one token attending over `context_length` positions
    (full square, as in the PaLM appendix B accounting): 2 · context · (d_qk + d_v) · heads per
    layer, a local layer's context capped at its window."""
    if config.attention == "mla":
        qk, v = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
    else:
        qk = v = config.head_dim
    attended = sum(min(window or context_length, context_length) for window in map(config.window, range(config.n_layers)))
    return 2 * attended * (qk + v) * config.n_heads


def kv_cache_positions(config: ModelConfig, context_length: int) -> tuple[int, int]:
    """(global layers, positions all local layers hold together) for a sequence of `context_length`."""
    local = sum(min(window - 1, context_length) for window in map(config.window, range(config.n_layers)) if window)
    return config.layer_kinds.count("global"), local


def model_cost(config: ModelConfig, dtype: str = "bf16", context_length: int | None = None) -> ModelCost:
    model = meta_model(config)
    parameters = sum(p.numel() for p in model.parameters())
    embedding = model.token_embedding.weight.numel()
    if config.position == "learned":
        embedding += model.positions.embedding.weight.numel()
    non_embedding = parameters - embedding
    if not config.tie_embeddings:
        non_embedding -= model.lm_head.weight.numel()
    routed_inactive = sum(
        sum(p.numel() for p in module.experts.parameters()) * (len(module.experts) - module.top_k) // len(module.experts)
        for module in model.modules() if isinstance(module, MoE)
    )
    context_length = context_length or config.context_length
    forward = 2 * _matmul_parameters(model) + attention_flops_per_token(config, context_length)
    global_layers, local_positions = kv_cache_positions(config, context_length)
    kv_elements = config.kv_cache_elements_per_token_per_layer * global_layers
    local_bytes = config.kv_cache_elements_per_token_per_layer * local_positions * DTYPE_BYTES[dtype]
    return ModelCost(
        parameters=parameters,
        non_embedding_parameters=non_embedding,
        active_parameters=parameters - routed_inactive,
        flops_per_token=3 * forward,
        kv_cache_elements_per_token=kv_elements,
        kv_cache_bytes_per_token=kv_elements * DTYPE_BYTES[dtype],
        kv_cache_local_bytes=local_bytes,
        kv_cache_bytes=kv_elements * DTYPE_BYTES[dtype] * context_length + local_bytes,
        weight_bytes=parameters * DTYPE_BYTES[dtype],
        gradient_bytes=parameters * DTYPE_BYTES[dtype],
        optimizer_bytes=parameters * 8,
    )


def attention_variants(config: ModelConfig) -> dict[str, ModelConfig]:
    """The same model with MHA, GQA, MQA and MLA, for a side-by-side cache comparison. GQA keeps the
    config's groups (or a quarter of the heads, at least 2); MLA uses DeepSeek-V2's choices
    d_c = 4·d_h, d_h^R = d_h/2."""
    head_dim = config.head_dim
    gqa_heads = config.n_kv_heads if 1 < config.n_kv_heads < config.n_heads else max(2, config.n_heads // 4)
    while config.n_heads % gqa_heads:
        gqa_heads -= 1
    base = dataclasses.replace(config, attention="mha", position="rope" if config.attention == "mla" else config.position)
    return {
        "MHA": dataclasses.replace(base, n_kv_heads=config.n_heads),
        f"GQA ({gqa_heads} groups)": dataclasses.replace(base, n_kv_heads=gqa_heads),
        "MQA": dataclasses.replace(base, n_kv_heads=1),
        "MLA": dataclasses.replace(
            base, attention="mla", position="rope", kv_lora_rank=4 * head_dim, qk_rope_head_dim=max(2, head_dim // 2),
            qk_nope_head_dim=head_dim, v_head_dim=head_dim, qk_norm=False,
        ) if config.attention != "mla" else config,
    }
