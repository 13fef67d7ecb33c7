"""AdamW's parameter groups (matrices decay; biases and norm gains do not; tied and frozen
weights handled), its kernel choice (fused on plain tensors, foreach on DTensors), and its steps
against torch's reference AdamW and the update rule worked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.optimizer import build_optimizer

CONFIG = TrainConfig(lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.9, eps=1e-6)


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(parameter) for parameter in group["params"]}
    return {name for name, parameter in model.named_parameters() if id(parameter) in ids}


def test_matrices_decay_biases_and_norm_gains_do_not():
    model = Transformer(preset_config("tiny-gpt2"))  # biases, LayerNorms with biases, learned positions, a tied head
    decay, no_decay = build_optimizer(model, CONFIG).param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    decayed, kept = _names(model, decay), _names(model, no_decay)
    assert {"token_embedding.weight", "positions.embedding.weight", "blocks.0.attention.q_proj.weight",
            "blocks.1.ffn.down_proj.weight"} <= decayed
    assert {"blocks.0.attention.q_proj.bias", "blocks.0.attention_norm.weight", "blocks.0.attention_norm.bias",
            "norm.weight", "blocks.1.ffn.up_proj.bias"} <= kept
    assert all(model.get_parameter(name).dim() >= 2 for name in decayed)
    assert all(model.get_parameter(name).dim() < 2 for name in kept)
    # every parameter exactly once: the tied head is the embedding, not a second copy
    listed = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))
    assert model.lm_head.weight is model.token_embedding.weight


def test_frozen_parameters_are_left_out_and_an_empty_group_is_dropped():
    """LoRA trains matrices only: one group, and nothing frozen in it."""
    model = Transformer(preset_config("tiny-llama"))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.endswith(("q_proj.weight", "v_proj.weight"))
    groups = build_optimizer(model, CONFIG).param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.5
    assert _names(model, groups[0]) == {f"blocks.{layer}.attention.{projection}.weight"
                                        for layer in range(2) for projection in ("q_proj", "v_proj")}


def test_settings_come_from_the_train_config_and_plain_tensors_use_the_fused_kernel():
    optimizer = build_optimizer(nn.Linear(4, 3), CONFIG)
    assert (optimizer.defaults["lr"], optimizer.defaults["betas"], optimizer.defaults["eps"]) == (1e-2, (0.8, 0.9), 1e-6)
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["foreach"]


def test_sharded_parameters_use_foreach():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        mesh = init_device_mesh("cpu", (1,))
        layer = nn.Linear(4, 3)
        for name, parameter in list(layer.named_parameters()):
            setattr(layer, name, nn.Parameter(distribute_tensor(parameter.detach(), mesh, [Replicate()])))
        assert isinstance(layer.weight, DTensor)
        optimizer = build_optimizer(layer, CONFIG)
        assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    finally:
        dist.destroy_process_group()


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    inputs = torch.randn(32, 6)
    return model, inputs, inputs @ torch.randn(6, 1)


def test_steps_equal_torch_reference_adamw_with_the_same_groups():
    model, inputs, targets = _regression()
    reference, _, _ = _regression()
    optimizer = build_optimizer(model, CONFIG)
    matrices = [p for p in reference.parameters() if p.dim() >= 2]
    vectors = [p for p in reference.parameters() if p.dim() < 2]
    expected = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.5}, {"params": vectors, "weight_decay": 0.0}],
                                 lr=1e-2, betas=(0.8, 0.9), eps=1e-6, foreach=False, fused=False)  # the for-loop kernel
    losses = []
    for _ in range(20):
        for net, opt in ((model, optimizer), (reference, expected)):
            loss = (net(inputs) - targets).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2  # it optimises
    for (name, actual), wanted in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(actual, wanted, atol=1e-6, rtol=1e-5, msg=name)


def test_first_step_by_hand():
    """Step 1 of AdamW: the bias-corrected moments are g and g², so the update is lr·g/(|g| + eps),
    and decay multiplies a matrix (only) by 1 - lr·weight_decay first."""
    layer = nn.Linear(3, 2)
    before = {name: parameter.detach().clone() for name, parameter in layer.named_parameters()}
    gradients = {"weight": torch.tensor([[0.5, -2.0, 1e-3], [3.0, -0.1, 0.25]]), "bias": torch.tensor([-1.0, 0.2])}
    optimizer = build_optimizer(layer, CONFIG)
    for name, parameter in layer.named_parameters():
        parameter.grad = gradients[name].clone()
    optimizer.step()
    lr, decay, eps = 1e-2, 0.5, 1e-6
    for name, parameter in layer.named_parameters():
        g = gradients[name]
        shrink = 1 - lr * decay if name == "weight" else 1.0
        torch.testing.assert_close(parameter.detach(), before[name] * shrink - lr * g / (g.abs() + eps), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_weight_decay_shrinks_matrices_without_gradient_signal(weight_decay):
    """With zero gradients Adam's update is zero: what remains is decay, on matrices only."""
    layer = nn.Linear(3, 2)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    optimizer = build_optimizer(layer, TrainConfig(lr=0.1, weight_decay=weight_decay))
    for _ in range(3):
        for parameter in layer.parameters():
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    torch.testing.assert_close(layer.weight.detach(), weight * (1 - 0.1 * weight_decay) ** 3)
    assert torch.equal(layer.bias.detach(), bias)
