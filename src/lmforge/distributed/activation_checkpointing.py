"""Activation checkpointing, applied to an unchanged model from outside (as torchtitan does): a
checkpointed block keeps only its input in the forward pass and recomputes its activations in
backward, so memory grows with the number of layers rather than with layers × activations per
layer, for about one extra forward pass."""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from lmforge.model.transformer import Transformer


def _recomputed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation and generation: nothing to save memory for
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: Transformer, every: int) -> None:
    """Recompute every `every`-th block (1: all, "full"; 2: every other, "selective"; 0: none).
    The blocks' forward is wrapped in place, so parameter names do not change."""
    if not every:
        return
    for index, block in enumerate(model.blocks):
        if index % every == 0:
            block.forward = functools.partial(_recomputed, block.forward)
