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


@pytest.mark.parametrize("tied", [True, False])
def test_untrained_rows_are_found_and_start_from_the_trained_mean(tied):
    """Rows that share one direction with many others (a base model's never-trained reserved
    tokens) or sit near zero are untrained; trained rows are not. Reset, they take the mean of the
    trained rows only, in the embedding and an untied output layer, and nothing else changes."""
    from lmforge.model.vocabulary import UNTRAINED_CLUSTER, reset_untrained_rows, untrained_rows

    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=200, tie_embeddings=tied)
    state = model_state(Transformer(config))
    embedding = state["token_embedding.weight"]
    shared = torch.randn(embedding.shape[1])
    cluster = list(range(150, 150 + UNTRAINED_CLUSTER + 10))  # reserved rows: one direction, a little noise
    embedding[cluster] = shared + 0.01 * torch.randn(len(cluster), embedding.shape[1])
    embedding[7] = 1e-4 * torch.randn(embedding.shape[1])  # a row left near zero
    before = {name: tensor.clone() for name, tensor in state.items()}
    assert untrained_rows(state, [3, 7, 42, 150, 160]) == [7, 150, 160]
    reset_untrained_rows(state, [7, 150, 160], like={160: 3, 150: 155})  # 155 is untrained itself: not copied
    torch.testing.assert_close(state["token_embedding.weight"][160], before["token_embedding.weight"][3])
    trained = [index for index in range(200) if index != 7 and index not in cluster]
    for name in ("token_embedding.weight", *(() if tied else ("lm_head.weight",))):
        expected = before[name][trained].mean(dim=0)
        torch.testing.assert_close(state[name][[7, 150]], expected.expand(2, -1))
        untouched = [index for index in range(200) if index not in (7, 150, 160)]
        assert torch.equal(state[name][untouched], before[name][untouched])
    direction = torch.nn.functional.cosine_similarity(state["token_embedding.weight"][150], shared, dim=0)
    assert direction < 0.5  # out of the cluster: a logit of its own to learn
