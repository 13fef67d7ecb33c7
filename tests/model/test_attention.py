"""Attention masks: causal, continuing a cached prefix, and local (sliding-window) attention, each
against attention written out by hand."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.attention import causal_attention


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
