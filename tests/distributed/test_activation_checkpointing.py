"""Activation checkpointing from outside the model: in fp32 exactly the loss and gradients of the
model without it (the recomputation runs the same kernels on the same inputs), the same parameter
names, and blocks' activations are recomputed (not kept) in backward."""

from __future__ import annotations

import pytest
import torch

from lmforge.distributed.activation_checkpointing import apply_activation_checkpointing
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer


def _loss_and_gradients(every: int, preset: str = "tiny-llama"):
    torch.manual_seed(0)
    model = Transformer(preset_config(preset))
    apply_activation_checkpointing(model, every)
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    forwards = []
    for block in model.blocks:  # the attention inside: recomputation calls the block's forward itself
        block.attention.register_forward_hook(lambda module, args, output: forwards.append(1))
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    return loss, {name: parameter.grad for name, parameter in model.named_parameters()}, len(forwards)


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mla-moe"])
def test_same_gradients_same_names_and_blocks_rerun(every, preset):
    plain_loss, plain_grads, plain_forwards = _loss_and_gradients(0, preset)
    loss, grads, forwards = _loss_and_gradients(every, preset)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, plain_grads[name]), name
    blocks = len(Transformer(preset_config(preset)).blocks)
    assert forwards == plain_forwards + len(range(0, blocks, every))  # each checkpointed block ran again in backward


def test_evaluation_runs_each_block_once():
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny-llama"))
    apply_activation_checkpointing(model, 1)
    calls = []
    model.blocks[0].attention.register_forward_hook(lambda module, args, output: calls.append(1))
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]])).sum()
    assert calls == [1]
