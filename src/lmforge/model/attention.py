"""Multi-head attention with grouped key/value heads: MHA (n_kv = n_heads), GQA, MQA (n_kv = 1);
global, or local over a sliding window; optionally with RMS-normalised queries and keys (QK-norm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache, SlidingKVCache, Slots, SlotKVCache, new_cache
from lmforge.model.norm import build_norm
from lmforge.model.positions import Rope, rotate


def _visible(query_length: int, key_length: int, window: int | None, device) -> torch.Tensor:
    """[query, key] booleans: query i (at key position i + offset) sees keys at or before it,
    and with a window only the `window` newest of those."""
    query_positions = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    key_positions = torch.arange(key_length, device=device)[None, :]
    visible = key_positions <= query_positions
    if window is not None:
        visible &= key_positions > query_positions - window
    return visible


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, scale: float | None = None,
                     window: int | None = None, visible: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA over [batch, heads, time, dim]; the last q.shape[-2] of k's positions are the queries'.

    Without a cache (or on a cache's first fill) this is plain causal attention; when queries
    continue a cached prefix, query i may see every key up to its own absolute position. A
    `window` also hides keys `window` or more positions before the query, and `visible`
    ([batch, 1, query, key] booleans, causal already: packed examples' segments) hides whatever it
    marks False.
    """
    query_length, key_length = q.shape[-2], k.shape[-2]
    mask, causal = None, False
    if visible is not None:
        mask = visible if window is None or key_length <= window else visible & _visible(query_length, key_length, window, q.device)
    elif window is not None and key_length > window:
        mask = _visible(query_length, key_length, window, q.device)
    elif query_length == key_length:
        causal = query_length > 1
    elif query_length > 1:
        mask = _visible(query_length, key_length, None, q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.d_model, self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.attention_out_bias)
        # QK-norm (Gemma 3, Qwen3): bounded logits, whatever the projections' scale.
        self.q_norm = build_norm(config, self.head_dim) if config.qk_norm else nn.Identity()
        self.k_norm = build_norm(config, self.head_dim) if config.qk_norm else nn.Identity()
        self.scale = config.query_pre_attn_scalar ** -0.5 if config.query_pre_attn_scalar else None
        self.window = config.window(layer_id)
        self.dropout = config.dropout
        self.fused_qkv = None  # `lmforge.quant`: q, k and v from one integer matmul, while these are its layers

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype, device,
                  slots: Slots | None = None) -> KVCache | SlidingKVCache | SlotKVCache:
        shape = (batch_size, self.n_kv_heads, self.head_dim)
        return new_cache([shape, shape], self.window, max_length, dtype, device, slots)

    def forward(self, x: torch.Tensor, rope: Rope, cache: KVCache | SlidingKVCache | None = None,
                visible: torch.Tensor | None = None) -> torch.Tensor:
        batch, time, _ = x.shape
        # -1 rather than n_heads: under tensor parallelism each rank holds a slice of the heads.
        if self.fused_qkv is not None and self.fused_qkv.layers == (self.q_proj, self.k_proj, self.v_proj):
            q, k, v = self.fused_qkv(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = self.q_norm(q.view(batch, time, -1, self.head_dim).transpose(1, 2))
        k = self.k_norm(k.view(batch, time, -1, self.head_dim).transpose(1, 2))
        v = v.view(batch, time, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        window = self.window
        if cache is not None:
            k, v = cache.append(k, v)
            if isinstance(cache, SlotKVCache) and cache.visible is not None:  # rows at positions of their own:
                visible, window = cache.visible, None  # the cache masks each
        out = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.scale, window, visible)
        return self.o_proj(out.transpose(1, 2).reshape(batch, time, -1))
