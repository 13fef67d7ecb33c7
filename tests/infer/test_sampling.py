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


def test_ids_past_the_tokenizer_vocabulary_are_never_chosen():
    padded = torch.cat([LOGITS, torch.full((1, 3), 50.0)], dim=-1)  # rows no token decodes to, and the likeliest
    for options in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 1.0, "top_k": 2},
                    {"temperature": 1.0, "top_p": 0.6}, {"temperature": 1.0, "top_p": 0.95}):
        generator = torch.Generator().manual_seed(0)
        draws = {int(sample_next(padded, generator=generator, tokenizer_vocab_size=4, **options)) for _ in range(400)}
        assert draws == _draws(**options), options
