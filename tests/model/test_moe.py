"""The mixture-of-experts layer routes each token to its top-k experts and balances load."""

from __future__ import annotations

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.moe import MoE

CONFIG = ModelConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=10, context_length=8, n_experts=4,
                     n_experts_per_token=2, n_shared_experts=1, moe_d_ff=8)


def test_output_equals_per_token_reference():
    torch.manual_seed(0)
    moe = MoE(CONFIG)
    x = torch.randn(3, 5, 16)
    out = moe(x)
    tokens = x.reshape(-1, 16)
    probabilities = moe.router(tokens).softmax(-1)
    expected = []
    for token, p in zip(tokens, probabilities):
        weights, chosen = p.topk(2)
        weights = weights / weights.sum()
        y = sum(w * moe.experts[int(e)](token) for w, e in zip(weights, chosen))
        expected.append(y + moe.shared(token))
    torch.testing.assert_close(out.reshape(-1, 16), torch.stack(expected), atol=1e-6, rtol=1e-5)


def test_aux_loss_is_one_when_routing_is_uniform_and_larger_when_collapsed():
    moe = MoE(CONFIG)
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(64, 16))
    assert abs(moe.aux_loss.item() - 1.0) < 1e-6
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 5.0
        moe.router.weight[1] = 4.0
    x = torch.rand(64, 16) + 0.5  # positive inputs: experts 0 and 1 take every token
    moe(x)
    assert moe.aux_loss.item() > 1.5


def test_gradients_reach_router_and_experts():
    moe = MoE(CONFIG)
    out = moe(torch.randn(8, 16))
    (out.sum() + moe.aux_loss).backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for e in moe.experts for p in e.parameters())
