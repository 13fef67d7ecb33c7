"""LoRA: starts as the base model, adds exactly s·B·A, merges into the same function, trains only itself."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.peft import LoraConfig, apply_peft, merge_lora, peft_state
from lmforge.peft.lora import owns


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def test_zero_b_gives_identical_logits(tiny, tokens):
    model = tiny()
    before = _logits(model, tokens)
    apply_peft(model, "lora", LoraConfig(targets="all-linear"))
    assert torch.equal(_logits(model, tokens), before)


def test_forward_equals_base_with_hand_computed_weights(tiny, perturb, tokens):
    model = tiny()
    reference = copy.deepcopy(model)
    config = LoraConfig(r=4, alpha=12.0, targets=("q_proj", "v_proj", "down_proj"))
    apply_peft(model, "lora", config)
    perturb(model, owns)
    with torch.no_grad():
        for name, linear in reference.named_modules():
            adapted = model.get_submodule(name)
            if hasattr(adapted, "lora_A"):
                linear.weight += (12.0 / 4) * adapted.lora_B.weight @ adapted.lora_A.weight
    expected, actual = _logits(reference, tokens), _logits(model, tokens)
    assert not torch.allclose(actual, _logits(tiny(), tokens), atol=1e-3)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual - expected).abs().max()


def test_merge_gives_same_logits_and_removes_lora(tiny, perturb, tokens):
    model = tiny()
    base_names = list(model.state_dict())
    apply_peft(model, "lora", LoraConfig(targets="all-linear"))
    perturb(model, owns)
    unmerged = _logits(model, tokens)
    merge_lora(model)
    assert list(model.state_dict()) == base_names
    assert not any(module._forward_hooks for module in model.modules())
    assert (_logits(model, tokens) - unmerged).abs().max() < 1e-5
    with pytest.raises(LmforgeError, match="no LoRA"):
        merge_lora(model)


def test_base_names_unchanged_and_only_lora_trains(tiny, perturb, tokens):
    model = tiny()
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainable = apply_peft(model, "lora", LoraConfig())
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in base.items())
    assert sorted(set(state) - set(base)) == sorted(trainable)
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.rsplit(".", 2)[0].split(".", 2)[2] for name in trainable} == {"attention.q_proj", "attention.v_proj"}
    assert [name for name, p in model.named_parameters() if p.requires_grad] == trainable

    perturb(model, owns)  # with B = 0, A's gradient would be zero too
    model(tokens, targets=tokens).backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_all_linear_adapts_every_block_linear_but_not_the_head(tiny):
    model = tiny()
    block_linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                     and name.startswith("blocks.")]
    apply_peft(model, "lora", LoraConfig(targets="all-linear"))
    adapted = {name.rsplit(".", 2)[0] for name in peft_state(model)}
    assert adapted == set(block_linears)
    assert not hasattr(model.lm_head, "lora_A")


@pytest.mark.parametrize(("targets", "expected"), [
    (("blocks.0.*",), {f"blocks.0.{kind}" for kind in ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                                                      "attention.o_proj", "ffn.gate_proj", "ffn.up_proj", "ffn.down_proj")}),
    (("ffn.*_proj",), {f"blocks.{layer}.ffn.{kind}" for layer in (0, 1) for kind in ("gate_proj", "up_proj", "down_proj")}),
    (("blocks.1.attention.o_proj", "k_proj"), {"blocks.1.attention.o_proj", "blocks.0.attention.k_proj",
                                                "blocks.1.attention.k_proj"}),
])
def test_pattern_targets(tiny, targets, expected):
    model = tiny()
    apply_peft(model, "lora", LoraConfig(targets=targets))
    assert {name.rsplit(".", 2)[0] for name in peft_state(model)} == expected


def test_unknown_target_lists_the_linear_layers(tiny):
    with pytest.raises(LmforgeError, match=r"'c_attn' matches no linear layer.*attention\.q_proj.*ffn\.up_proj"):
        apply_peft(tiny(), "lora", LoraConfig(targets=("q_proj", "c_attn")))


def test_rslora_scales_by_root_rank(tiny, perturb, tokens):
    assert LoraConfig(r=16, alpha=8.0).scale == 0.5
    assert LoraConfig(r=16, alpha=8.0, rslora=True).scale == 2.0
    base = _logits(tiny(), tokens)
    deltas = {}
    for rslora in (False, True):
        model = tiny()
        apply_peft(model, "lora", LoraConfig(r=16, alpha=8.0, rslora=rslora, targets=("o_proj",)))
        perturb(model, owns)
        model.blocks[1].attention.o_proj.lora_B.weight.data *= 1e-3  # stay where the update is linear in the scale
        model.blocks[0].attention.o_proj.lora_B.weight.data.zero_()
        deltas[rslora] = _logits(model, tokens) - base
    ratio = deltas[True].norm() / deltas[False].norm()
    assert math.isclose(float(ratio), math.sqrt(16), rel_tol=1e-3)


def test_config_is_checked():
    assert LoraConfig(targets="q_proj, v_proj").targets == ("q_proj", "v_proj")
    with pytest.raises(LmforgeError, match="--lora.r"):
        LoraConfig(r=0)
    with pytest.raises(LmforgeError, match="--lora.dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(LmforgeError, match="all-linear"):
        LoraConfig(targets=("all-linear", "q_proj"))


def test_dropout_applies_only_in_training(tiny, perturb, tokens):
    model = tiny()
    apply_peft(model, "lora", LoraConfig(dropout=0.5))
    perturb(model, owns)
    assert torch.equal(_logits(model, tokens), _logits(model, tokens))
    model.train()
    torch.manual_seed(0)
    first = _logits(model, tokens)
    assert not torch.equal(first, _logits(model, tokens))


def test_a_second_method_is_refused(tiny):
    model = tiny()
    apply_peft(model, "lora", LoraConfig())
    with pytest.raises(LmforgeError, match="already has lora"):
        apply_peft(model, "lora", LoraConfig())
    with pytest.raises(LmforgeError, match="not a PEFT method"):
        apply_peft(tiny(), "ia3", LoraConfig())


def test_lora_disabled_gives_the_base_models_logits_and_restores_the_update(tiny, perturb, tokens):
    """PPO's reference with LoRA: the same model with every update switched off, then on again."""
    from lmforge.peft.lora import lora_disabled

    model = tiny()
    base = _logits(model, tokens)
    apply_peft(model, "lora", LoraConfig(targets="all-linear"))
    perturb(model, owns)
    adapted = _logits(model, tokens)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with lora_disabled(model):
        assert torch.equal(_logits(model, tokens), base)
    assert torch.equal(_logits(model, tokens), adapted)
