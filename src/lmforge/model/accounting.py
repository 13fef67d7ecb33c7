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
    kv_cache_elements_per_token: int  # over all layers
    kv_cache_bytes_per_token: int
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
    (full square, as in the PaLM appendix B accounting): 2 · layers · context · (d_qk + d_v) · heads."""
    if config.attention == "mla":
        qk, v = config.qk_nope_head_dim + config.qk_rope_head_dim, config.v_head_dim
    else:
        qk = v = config.head_dim
    return 2 * config.n_layers * context_length * (qk + v) * config.n_heads


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
    forward = 2 * _matmul_parameters(model) + attention_flops_per_token(config, context_length or config.context_length)
    kv_elements = config.kv_cache_elements_per_token_per_layer * config.n_layers
    return ModelCost(
        parameters=parameters,
        non_embedding_parameters=non_embedding,
        active_parameters=parameters - routed_inactive,
        flops_per_token=3 * forward,
        kv_cache_elements_per_token=kv_elements,
        kv_cache_bytes_per_token=kv_elements * DTYPE_BYTES[dtype],
        weight_bytes=parameters * DTYPE_BYTES[dtype],
        gradient_bytes=parameters * DTYPE_BYTES[dtype],
        optimizer_bytes=parameters * 8,
    )


def attention_variants(config: ModelConfig) -> dict[str, ModelConfig]:
    """The same model with MHA, GQA, MQA and MLA, for a side-by-side cache comparison. GQA keeps the
    config's groups (or 8 heads' worth); MLA uses DeepSeek-V2's choices d_c = 4·d_h, d_h^R = d_h/2."""
    head_dim = config.head_dim
    gqa_heads = config.n_kv_heads if 1 < config.n_kv_heads < config.n_heads else max(1, config.n_heads // 4)
    while config.n_heads % gqa_heads:
        gqa_heads -= 1
    base = dataclasses.replace(config, attention="mha", position="rope" if config.attention == "mla" else config.position)
    return {
        "MHA": dataclasses.replace(base, n_kv_heads=config.n_heads),
        f"GQA ({gqa_heads} groups)": dataclasses.replace(base, n_kv_heads=gqa_heads),
        "MQA": dataclasses.replace(base, n_kv_heads=1),
        "MLA": dataclasses.replace(
            base, attention="mla", position="rope", kv_lora_rank=4 * head_dim, qk_rope_head_dim=max(2, head_dim // 2),
            qk_nope_head_dim=head_dim, v_head_dim=head_dim,
        ) if config.attention != "mla" else config,
    }
