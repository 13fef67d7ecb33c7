"""Mixture-of-experts feed-forward: a top-k softmax router over routed experts, optional always-on
shared experts (DeepSeekMoE), and the Switch-Transformer load-balancing loss.

Experts are the same feed-forward kind as the dense model's (`config.mlp`), so MoE can replace
the FFN of any architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.mlp import build_mlp


class MoE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.n_experts_per_token
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = nn.ModuleList(build_mlp(config, config.moe_d_ff) for _ in range(config.n_experts))
        self.shared = build_mlp(config, config.moe_d_ff * config.n_shared_experts) if config.n_shared_experts else None
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probabilities = F.softmax(self.router(tokens).float(), dim=-1)
        weights, chosen = probabilities.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)

        out = torch.zeros_like(tokens)
        # Sort (token, slot) pairs by expert so each expert runs once on a contiguous batch.
        flat_expert = chosen.flatten()
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=len(self.experts))
        for expert, slots in zip(self.experts, torch.split(order, counts.tolist())):
            if slots.numel():
                rows = slots // self.top_k
                out.index_add_(0, rows, expert(tokens[rows]) * weights.flatten()[slots, None])
        if self.shared is not None:
            out = out + self.shared(tokens)

        # Switch load balancing: E · Σ_i f_i · P_i, f_i the share of routed slots sent to expert i,
        # P_i the mean router probability of expert i; minimal (= 1) when routing is uniform.
        share = counts.float() / flat_expert.numel()
        self.aux_loss = len(self.experts) * (share * probabilities.mean(dim=0)).sum()
        return out.view(shape)
