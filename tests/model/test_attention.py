"""Attention masks (causal, continuing a cached prefix, local (sliding-window), packed segments)
and the attention module (MHA, GQA, MQA, biases, QK-norm, softmax scale), each against attention
written out by hand."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.attention import Attention, causal_attention
from lmforge.model.config import ModelConfig


def _reference(q, k, v, window, scale):
    """Softmax attention with query i at key position i + offset seeing keys j with
    position - window < j <= position (Hugging Face's sliding-window definition)."""
    offset = k.shape[-2] - q.shape[-2]
    position = torch.arange(q.shape[-2])[:, None] + offset
    key = torch.arange(k.shape[-2])[None, :]
    visible = (key <= position) & (key > position - (window or k.shape[-2] + 1))
    scores = (q @ k.transpose(-1, -2)) * scale
    return scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("queries, keys, window", [
    (12, 12, None), (5, 12, None), (1, 12, None),  # full square, a chunk after a cached prefix, one token
    (12, 12, 4), (5, 12, 4), (1, 4, 4), (3, 6, 4),  # the same with a window of 4
])
def test_masks_match_written_out_attention(queries, keys, window):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=generator) for n in (queries, keys, keys))
    expected = _reference(q, k, v, window, scale=0.3)
    torch.testing.assert_close(causal_attention(q, k, v, 0.0, scale=0.3, window=window), expected)


def _attention_module(**fields) -> Attention:
    torch.manual_seed(0)
    config = ModelConfig(**{**dict(n_layers=1, d_model=48, n_heads=6, n_kv_heads=2, head_dim=10, vocab_size=16,
                                   context_length=32, norm_eps=1e-6), **fields})
    attention = Attention(config).eval()
    with torch.no_grad():
        for parameter in attention.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
            else:  # biases and QK-norm gains
                parameter.copy_(1.0 + 0.3 * torch.randn_like(parameter))
    return attention


def _module_reference(attention: Attention, x, cos, sin, window=None, scale=None, qk_norm=False, visible=None):
    """The projections, per-head RMS-normalised queries and keys, rotation, each group of query
    heads reading its key/value head, written-out attention and the output projection."""
    batch, time, _ = x.shape

    def heads(projection):
        return (x @ projection.weight.T + (projection.bias if projection.bias is not None else 0)).view(
            batch, time, -1, attention.head_dim).transpose(1, 2)

    def norm(t, module):
        if not qk_norm:
            return t
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + module.eps) * module.weight

    def rotate(t):
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

    q = rotate(norm(heads(attention.q_proj), attention.q_norm))
    k = rotate(norm(heads(attention.k_proj), attention.k_norm))
    v = heads(attention.v_proj)
    group = attention.n_heads // attention.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scale = scale or attention.head_dim ** -0.5
    if visible is None:
        out = _reference(q, k, v, window, scale)
    else:
        scores = (q @ k.transpose(-1, -2)) * scale
        out = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v
    out = out.transpose(1, 2).reshape(batch, time, -1)
    return out @ attention.o_proj.weight.T + (attention.o_proj.bias if attention.o_proj.bias is not None else 0)


def _cos_sin(time: int, dim: int):
    angles = torch.arange(time)[:, None] * 100.0 ** (-torch.arange(0, dim, 2) / dim)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("fields", [
    {},  # GQA, 3 query heads a key/value head, head_dim 10 ≠ d_model / n_heads
    {"n_kv_heads": 6},  # MHA
    {"n_kv_heads": 1, "qkv_bias": True, "attention_out_bias": True},  # MQA with biases (Qwen2, GPT-2)
    {"qk_norm": True, "query_pre_attn_scalar": 24.0},  # Gemma 3
    {"sliding_window": 3},  # a local layer
], ids=["gqa", "mha", "mqa-biases", "qk-norm-scale", "local"])
def test_attention_module_matches_written_out_reference(fields):
    attention = _attention_module(**fields)
    x = torch.randn(2, 9, 48, generator=torch.Generator().manual_seed(1))
    cos, sin = _cos_sin(9, 10)
    scale = fields["query_pre_attn_scalar"] ** -0.5 if "query_pre_attn_scalar" in fields else None
    with torch.no_grad():
        actual = attention(x, (cos, sin))
        expected = _module_reference(attention, x, cos, sin, fields.get("sliding_window"), scale, fields.get("qk_norm", False))
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_segment_mask_and_window_both_apply():
    """A packed row's `visible` mask hides other examples; a local layer also hides keys beyond
    its window inside an example."""
    attention = _attention_module(sliding_window=3)
    x = torch.randn(1, 10, 48, generator=torch.Generator().manual_seed(2))
    cos, sin = _cos_sin(10, 10)
    segments = torch.tensor([1] * 6 + [2] * 4)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    same = (segments[:, None] == segments[None, :]) & causal
    position = torch.arange(10)
    in_window = position[None, :] > position[:, None] - 3
    with torch.no_grad():
        actual = attention(x, (cos, sin), visible=same[None, None])
        expected = _module_reference(attention, x, cos, sin, visible=same & in_window)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_learned_positions_skip_rotation():
    attention = _attention_module()
    x = torch.randn(1, 5, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = _module_reference(attention, x, torch.ones(5, 10), torch.zeros(5, 10))  # rotation by 0
        torch.testing.assert_close(attention(x, None), expected, atol=1e-5, rtol=1e-5)
