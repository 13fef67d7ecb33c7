"""Bottleneck adapters: start as the base model, sit on attention's and the feed-forward's outputs, train only themselves."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.peft import AdapterConfig, apply_peft
from lmforge.peft.adapters import owns


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "tiny-mla-moe"])
def test_zero_init_gives_identical_logits(tiny, tokens, preset):
    model = tiny(preset)
    before = _logits(model, tokens)
    apply_peft(model, "adapter", AdapterConfig(size=8))
    assert torch.equal(_logits(model, tokens), before)


def test_trainable_set_is_the_adapters(tiny, perturb, tokens):
    model = tiny()
    base = set(model.state_dict())
    trainable = apply_peft(model, "adapter", AdapterConfig(size=8, activation="silu"))
    expected = {f"blocks.{layer}.{where}.adapter.{projection}.{kind}" for layer in (0, 1)
                for where in ("attention", "ffn") for projection in ("down", "up") for kind in ("weight", "bias")}
    assert set(trainable) == expected
    assert set(model.state_dict()) == base | expected
    perturb(model, owns)
    model(tokens, targets=tokens).backward()
    assert all((parameter.grad is not None) == (name in expected) for name, parameter in model.named_parameters())


def test_adapter_transforms_the_layer_output(tiny, perturb, tokens):
    """After training moves the up-projection, the feed-forward's output is h + up(act(down(h)))."""
    model = tiny()
    ffn = copy.deepcopy(model.blocks[0].ffn)
    apply_peft(model, "adapter", AdapterConfig(size=8, activation="relu"))
    before = _logits(model, tokens)
    perturb(model, owns)
    assert not torch.allclose(_logits(model, tokens), before, atol=1e-3)
    adapter = model.blocks[0].ffn.adapter
    x = torch.randn(2, 5, model.config.d_model)
    with torch.no_grad():
        h = ffn(x)
        expected = h + adapter.up(torch.relu(adapter.down(h)))
        assert torch.allclose(model.blocks[0].ffn(x), expected, atol=1e-6)


def test_config_is_checked():
    with pytest.raises(LmforgeError, match="--adapter.activation must be one of gelu, relu, silu"):
        AdapterConfig(activation="tanh")
    with pytest.raises(LmforgeError, match="--adapter.size"):
        AdapterConfig(size=0)
