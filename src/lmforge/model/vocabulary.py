"""Growing a model's vocabulary for new special tokens (a chat template's turn markers): the
embedding (and an untied output layer) gets rows for the new ids, set to the mean of the rows the
tokenizer already uses — a neutral start that the fine-tune then moves (random rows would make
the new tokens' logits arbitrary, and zero rows make them far from every real token)."""

from __future__ import annotations

import dataclasses

import torch

from lmforge.model.config import ModelConfig

GROWN = ("token_embedding.weight", "lm_head.weight")


def grow_vocabulary(config: ModelConfig, state: dict[str, torch.Tensor], used: int, needed: int) -> ModelConfig:
    """Give ids used..needed-1 mean-initialised rows in `state` (in place); the config grows only
    when `needed` exceeds its vocab_size (padding rows past the tokenizer are reused first)."""
    vocab_size = max(config.vocab_size, needed)
    for name in GROWN:
        if name not in state:  # a tied output layer is the embedding
            continue
        weight = state[name]
        grown = torch.cat((weight, weight.new_zeros(vocab_size - weight.shape[0], weight.shape[1])))
        grown[used:needed] = weight[:used].float().mean(dim=0).to(weight.dtype)
        state[name] = grown
    return dataclasses.replace(config, vocab_size=vocab_size)
