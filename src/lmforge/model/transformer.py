"""The one decoder-only `Transformer`; every architecture is a `ModelConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.attention import Attention
from lmforge.model.config import ModelConfig
from lmforge.model.embedding import build_embedding
from lmforge.model.kv_cache import KVCache, SlidingKVCache, Slots, SlotKVCache
from lmforge.model.loss import linear_cross_entropy, linear_log_probs
from lmforge.model.mla import LatentAttention
from lmforge.model.mlp import build_mlp
from lmforge.model.moe import MoE
from lmforge.model.norm import RMSNorm, build_norm
from lmforge.model.positions import Ropes, RotaryPositions, build_positions


def same_segment(segments: torch.Tensor, cached: int = 0) -> torch.Tensor:
    """[batch, 1, time, cached + time] booleans, built once a forward pass: query i may see key j
    when j is not after it and both belong to one segment; the `cached` keys before them (a
    prefix) are visible to every query. Attention adds only a layer's window."""
    time = segments.shape[1]
    causal = torch.ones(time, time, dtype=torch.bool, device=segments.device).tril()
    same = (segments[:, None, :, None] == segments[:, None, None, :]) & causal
    if cached:
        same = torch.cat((same.new_ones(*same.shape[:-1], cached), same), dim=-1)
    return same


def _holds_several(segments: torch.Tensor) -> bool:
    """Whether any row holds two or more examples (padding, segment 0, aside)."""
    last = segments.amax(dim=1, keepdim=True)
    first = torch.where(segments > 0, segments, last).amin(dim=1, keepdim=True)
    return bool((first < last).any())


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then x + feed_forward(norm(x)); with
    sandwich norms (Gemma) each branch's output is normalised too before it joins the residual."""

    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_kind = config.layer_kinds[layer_id]  # which rotary table: global or local
        self.attention_norm = build_norm(config)
        self.attention = LatentAttention(config, layer_id) if config.attention == "mla" else Attention(config, layer_id)
        self.post_attention_norm = build_norm(config) if config.sandwich_norm else nn.Identity()
        self.ffn_norm = build_norm(config)
        self.ffn = MoE(config) if config.n_experts and layer_id >= config.n_dense_layers else build_mlp(config)
        self.post_ffn_norm = build_norm(config) if config.sandwich_norm else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, ropes: Ropes, cache: KVCache | SlidingKVCache | None = None,
                visible: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.attention(self.attention_norm(x), ropes.get(self.layer_kind), cache, visible)
        x = x + self.dropout(self.post_attention_norm(attended))
        return x + self.dropout(self.post_ffn_norm(self.ffn(self.ffn_norm(x))))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = build_embedding(config)
        self.positions = build_positions(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer_id) for layer_id in range(config.n_layers))
        self.norm = build_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        if self.token_embedding.weight.device.type != "meta":
            self.init_weights()
            self.init_buffers()

    def tie_weights(self) -> None:
        """GPT-2 and small Llamas share the input and output embedding: fewer parameters, and the
        output layer learns from every input occurrence of a token too. Call again after
        `to_empty()`, which allocates tied parameters separately."""
        if self.config.tie_embeddings and isinstance(self.lm_head, nn.Linear):  # (a quantized one keeps its own codes)
            self.lm_head.weight = self.token_embedding.weight

    def forward(self, tokens: torch.Tensor, cache: list[KVCache | SlidingKVCache] | None = None,
                targets: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, hidden_states: bool = False, log_probs: bool = False) -> torch.Tensor:
        """Logits [batch, time, vocab] for token ids [batch, time]; with `cache`, the ids continue
        the cached sequence and the cache grows by `time` positions. With `targets` [batch, time],
        the mean next-token loss over targets other than -100 instead, the output layer fused with
        the loss (`linear_cross_entropy`: the whole logits tensor is never built); with
        `hidden_states`, the final norm's output [batch, time, d_model] (for a classification head);
        with `targets` and `log_probs`, each target's log-probability [batch, time] in fp32, 0 where
        the target is -100 (sequence scores for preference training), again without all logits.

        Packed rows (several examples in one window) pass `positions` [batch, time], restarting at 0
        for each example, and `segments` [batch, time], an example number per token (from 1; 0 marks
        padding): a token then attends only to earlier tokens of its own segment (and to whatever
        the cache holds)."""
        start = cache[0].length if cache else 0
        if positions is None:
            positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x, ropes = self.positions(self.token_embedding(tokens), positions)
        x = self.dropout(x)
        # Rows holding one example each need no segment mask (causality already hides the padding
        # after it), so they keep the plain causal attention kernel.
        several = segments is not None and _holds_several(segments)
        visible = same_segment(segments, start) if several else None
        for index, block in enumerate(self.blocks):
            x = block(x, ropes, cache[index] if cache else None, visible)
        x = self.norm(x)
        if hidden_states:
            return x
        if targets is None:
            return self.lm_head(x)
        # A quantized output layer (`lmforge.quant`) has codes, not a weight: the losses read it dequantized.
        weight = self.lm_head.weight if isinstance(self.lm_head, nn.Linear) else self.lm_head.dequantized_weight(x.dtype)
        return linear_log_probs(x, weight, targets) if log_probs else linear_cross_entropy(x, weight, targets)

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype: torch.dtype | None = None,
                  slots: Slots | None = None) -> list[KVCache | SlidingKVCache | SlotKVCache]:
        """One cache a layer for up to `max_length` positions; a local layer's holds only its window.
        With `slots`, `batch_size` slots of independent sequences (see `infer/engine.py`)."""
        weight = self.token_embedding.weight
        max_length = max_length or self.config.context_length
        return [block.attention.new_cache(batch_size, max_length, dtype or weight.dtype, weight.device, slots)
                for block in self.blocks]

    def moe_aux_loss(self) -> torch.Tensor:
        """The load-balancing loss of the last forward pass, weighted by `moe_aux_loss_coef` (0 without MoE)."""
        losses = [block.ffn.aux_loss for block in self.blocks if isinstance(block.ffn, MoE)]
        return self.config.moe_aux_loss_coef * sum(losses) if losses else torch.zeros((), device=self.token_embedding.weight.device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2: N(0, σ) everywhere and σ/√(2·layers) on the projections that write into the
        residual stream, so its variance does not grow with depth. Llama (torchtitan): truncated
        normal, with residual projections scaled by the block's depth, σ/√(2·(layer+1))."""
        std = self.config.init_std
        normal = nn.init.normal_ if self.config.init == "gpt2" else nn.init.trunc_normal_
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()  # the identity: ones, or zeros for a unit-offset weight
        for layer_id, block in enumerate(self.blocks):
            depth = 2 * self.config.n_layers if self.config.init == "gpt2" else 2 * (layer_id + 1)
            for name, parameter in block.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    normal(parameter, mean=0.0, std=std / math.sqrt(depth))

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute non-persistent buffers (rope frequencies) after building on the meta device."""
        if isinstance(self.positions, RotaryPositions):
            self.positions.reset_frequencies()
