"""Packed rows: several examples in one window, each attending only to itself, with positions
restarting at 0, compute exactly what each example computes alone — for every attention and
position variant, and with a cached prefix visible to all of them."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer, same_segment

LENGTHS = (5, 3, 7)


def _packed(lengths, vocab_size, generator):
    examples = [torch.randint(0, vocab_size, (length,), generator=generator) for length in lengths]
    tokens = torch.cat(examples)[None]
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    segments = torch.cat([torch.full((length,), number + 1) for number, length in enumerate(lengths)])[None]
    return examples, tokens, positions, segments


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-gemma", "tiny-mla-moe"])
def test_packed_examples_equal_each_alone(preset):
    torch.manual_seed(0)
    config = preset_config(preset)  # MoE routes each token alone, so packing cannot change it either
    model = Transformer(config).eval()
    examples, tokens, positions, segments = _packed(LENGTHS, config.vocab_size, torch.Generator().manual_seed(1))
    with torch.no_grad():
        packed = model(tokens, positions=positions, segments=segments)[0]
        alone = torch.cat([model(example[None])[0] for example in examples])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_packed_loss_equals_the_mean_over_examples():
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny-llama")).eval()
    examples, tokens, positions, segments = _packed(LENGTHS, model.config.vocab_size, torch.Generator().manual_seed(2))
    targets = torch.roll(tokens, -1, dims=1)
    boundary = torch.cumsum(torch.tensor(LENGTHS), 0) - 1
    targets[0, boundary] = -100  # no example predicts the next one's first token
    with torch.no_grad():
        packed = model(tokens, targets=targets, positions=positions, segments=segments)
        total = sum(model(example[None, :-1], targets=example[None, 1:]) * (len(example) - 1) for example in examples)
    torch.testing.assert_close(packed, total / (sum(LENGTHS) - len(LENGTHS)), atol=1e-5, rtol=1e-5)


def test_same_segment_lets_every_query_see_the_cached_prefix():
    visible = same_segment(torch.tensor([[1, 1, 2]]), cached=2)
    assert visible.shape == (1, 1, 3, 5)
    assert visible[0, 0, :, :2].all()
    assert visible[0, 0].tolist()[2] == [True, True, False, False, True]


def test_rows_of_one_example_keep_the_plain_causal_kernel(monkeypatch):
    """No segment mask is built when every row holds one example (and padding): causality suffices."""
    import lmforge.model.transformer as transformer

    built = []
    monkeypatch.setattr(transformer, "same_segment", lambda *args: built.append(1) or same_segment(*args))
    model = Transformer(preset_config("tiny-llama")).eval()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]]), segments=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
        assert built == []
        model(torch.tensor([[1, 2, 3, 0]]), segments=torch.tensor([[1, 1, 2, 0]]))
        assert built == [1]
