"""Tiny random fp32 models and inputs for the PEFT tests."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer

VOCAB = 96


def tiny_model(preset: str = "tiny-llama", seed: int = 0, **fields) -> Transformer:
    torch.manual_seed(seed)
    config = dataclasses.replace(preset_config(preset), vocab_size=VOCAB, context_length=64, **fields)
    return Transformer(config).eval()


@torch.no_grad()
def randomize(model: Transformer, owns, seed: int = 1) -> None:
    """Random values in every parameter `owns` names: zero-initialised updates then do something."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if owns(name):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@pytest.fixture
def tiny():
    return tiny_model


@pytest.fixture
def perturb():
    return randomize


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
