"""Greedy, temperature, top-k and top-p choose from the right sets of tokens."""

from __future__ import annotations

import torch

from lmforge.infer.sampling import sample_next

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def _draws(**options) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    return {int(sample_next(LOGITS, generator=generator, **options)) for _ in range(400)}


def test_temperature_zero_is_argmax():
    assert _draws(temperature=0.0) == {0}


def test_top_k_limits_the_candidates():
    assert _draws(temperature=1.0, top_k=2) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert _draws(temperature=1.0, top_p=0.6) == {0, 1}  # 0.5 < 0.6, so the second token is needed
    assert _draws(temperature=1.0, top_p=0.5) == {0}
    assert _draws(temperature=1.0, top_p=0.95) == {0, 1, 2}


def test_plain_sampling_reaches_every_token_with_the_right_frequency():
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(LOGITS.expand(1000, 4), generator=generator) for _ in range(10)]).flatten()
    frequencies = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(frequencies, LOGITS.exp()[0], atol=0.02, rtol=0)
