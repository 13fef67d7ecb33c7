"""Multi-head latent attention (DeepSeek-V2, §2.1).

Keys and values are up-projected from a joint latent c_KV = W_DKV·h of rank d_c (eq. 9–11); RoPE
cannot pass through that low-rank product, so positions ride on a separate key k^R = RoPE(W_KR·h)
of d_h^R dimensions shared by all heads (eq. 14–19). Only c_KV and k^R are cached: d_c + d_h^R
numbers per token per layer, whatever the number of heads.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.model.attention import causal_attention
from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache, SlidingKVCache, Slots, SlotKVCache, new_cache
from lmforge.model.norm import RMSNorm
from lmforge.model.positions import Rope, rotate


class LatentAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.latent_dim = config.kv_lora_rank
        query_dim = self.n_heads * (self.nope_dim + self.rope_dim)
        if config.q_lora_rank:  # queries go through their own low-rank bottleneck (eq. 12–13)
            self.q_proj = nn.Sequential(
                nn.Linear(config.d_model, config.q_lora_rank, bias=False),
                RMSNorm(config.q_lora_rank, config.norm_eps),
                nn.Linear(config.q_lora_rank, query_dim, bias=False),
            )
        else:
            self.q_proj = nn.Linear(config.d_model, query_dim, bias=False)
        self.kv_down = nn.Linear(config.d_model, self.latent_dim, bias=False)
        self.k_rope_proj = nn.Linear(config.d_model, self.rope_dim, bias=False)
        self.kv_norm = RMSNorm(self.latent_dim, config.norm_eps)
        self.kv_up = nn.Linear(self.latent_dim, self.n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, config.d_model, bias=False)
        self.scale = config.query_pre_attn_scalar ** -0.5 if config.query_pre_attn_scalar else None
        self.window = config.window(layer_id)
        self.dropout = config.dropout

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype, device,
                  slots: Slots | None = None) -> KVCache | SlidingKVCache | SlotKVCache:
        shapes = [(batch_size, self.latent_dim), (batch_size, self.rope_dim)]
        return new_cache(shapes, self.window, max_length, dtype, device, slots)

    def forward(self, x: torch.Tensor, rope: Rope, cache: KVCache | SlidingKVCache | None = None,
                visible: torch.Tensor | None = None) -> torch.Tensor:
        batch, time, _ = x.shape
        cos, sin = rope
        q = self.q_proj(x).view(batch, time, self.n_heads, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q = torch.cat((q_nope, rotate(q_rope, cos, sin)), dim=-1)

        latent = self.kv_down(x)
        k_rope = rotate(self.k_rope_proj(x), cos, sin)
        window = self.window
        if cache is not None:
            latent, k_rope = cache.append(latent, k_rope)
            if isinstance(cache, SlotKVCache) and cache.visible is not None:  # rows at positions of their own:
                visible, window = cache.visible, None  # the cache masks each
        keys = latent.shape[1]
        kv = self.kv_up(self.kv_norm(latent)).view(batch, keys, self.n_heads, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_rope[:, None].expand(batch, self.n_heads, keys, self.rope_dim)), dim=-1)
        out = causal_attention(q, k, v, self.dropout if self.training else 0.0, self.scale, window, visible)
        return self.o_proj(out.transpose(1, 2).reshape(batch, time, -1))
