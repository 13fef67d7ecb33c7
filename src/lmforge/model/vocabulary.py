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


UNTRAINED_CLUSTER = 16  # a row whose direction this many other rows share was never trained
SHARED_DIRECTION = 0.9  # cosine above which two rows share a direction
NEAR_ZERO = 0.1  # a row shorter than this share of the median row is near zero


def _row_statistics(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit directions, near-zero mask) of the embedding rows."""
    weight = state["token_embedding.weight"].float()
    norms = weight.norm(dim=1)
    return weight / norms.clamp_min(1e-12)[:, None], norms < NEAR_ZERO * norms.median()


def untrained_rows(state: dict[str, torch.Tensor], ids: list[int]) -> list[int]:
    """Those of `ids` whose embedding row was never trained. A base model's unused and reserved
    tokens (Gemma's turn markers in its base checkpoint, thousands of <unusedN>) keep their shared
    initial direction, or a row near zero: a fine-tune that targets such a token spreads its
    probability over the whole cluster, and decoding samples <unused4226> where the turn should end."""
    directions, near_zero = _row_statistics(state)
    return [index for index in ids
            if near_zero[index] or int((directions @ directions[index] > SHARED_DIRECTION).sum()) > UNTRAINED_CLUSTER]


def reset_untrained_rows(state: dict[str, torch.Tensor], ids: list[int], like: dict[int, int] | None = None) -> None:
    """Set rows `ids` (in place) to the mean of the trained rows — those outside every such row's
    cluster and not near zero — as grown rows are: a start of their own that the fine-tune moves.
    `like` maps an id to a trained row to copy instead (an end-of-turn marker starts as the
    end-of-sequence token, which the model already predicts where a text ends)."""
    directions, near_zero = _row_statistics(state)
    trained = ~near_zero
    for index in ids:
        trained &= directions @ directions[index] <= SHARED_DIRECTION
    like = {index: source for index, source in (like or {}).items() if index in ids and trained[source]}
    for name in GROWN:
        if name in state:
            rows = state[name]
            rows[ids] = rows[trained].float().mean(dim=0).to(rows.dtype)
            for index, source in like.items():
                rows[index] = rows[source]
