"""New special tokens: mean-initialised rows, tied and untied, and padding rows reused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.model.checkpoint_directory import build_model, model_state
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.model.vocabulary import grow_vocabulary


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_the_mean_and_old_logits_are_kept(tied):
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=100, tie_embeddings=tied)
    model = Transformer(config).eval()
    state = model_state(model)
    grown_config = grow_vocabulary(config, state, used=100, needed=102)
    grown = build_model(grown_config, state, "test").eval()
    assert grown_config.vocab_size == 102
    mean = model.token_embedding.weight.mean(dim=0)
    torch.testing.assert_close(grown.token_embedding.weight[100:], mean.expand(2, -1))
    if not tied:
        torch.testing.assert_close(grown.lm_head.weight[100:], model.lm_head.weight.mean(dim=0).expand(2, -1))
    tokens = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(grown(tokens)[..., :100], model(tokens))


def test_padding_rows_are_reused_before_the_config_grows():
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=128)
    state = model_state(Transformer(config))
    grown = grow_vocabulary(config, state, used=100, needed=102)
    assert grown.vocab_size == 128 and state["token_embedding.weight"].shape[0] == 128
    torch.testing.assert_close(state["token_embedding.weight"][101], state["token_embedding.weight"][:100].mean(dim=0))
