"""RMSNorm and Gemma's unit-offset RMSNorm; every norm starts as the identity gain."""

from __future__ import annotations

import torch

from lmforge.model.norm import RMSNorm, UnitOffsetRMSNorm
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer


def test_unit_offset_norm_scales_by_one_plus_weight():
    x = torch.randn(3, 16)
    plain, offset = RMSNorm(16, 1e-6), UnitOffsetRMSNorm(16, 1e-6)
    torch.testing.assert_close(offset(x), plain(x))  # zero weight: the same as a gain of ones
    with torch.no_grad():
        offset.weight.normal_()
        plain.weight.copy_(1 + offset.weight)
    torch.testing.assert_close(offset(x), plain(x))


def test_unit_offset_norm_multiplies_in_fp32_before_rounding():
    """As Gemma does: x̂ · (1 + w) rounded to bf16 once, not x̂ rounded and then multiplied."""
    norm = UnitOffsetRMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    norm = norm.to(torch.bfloat16)
    x = torch.randn(8, 64).bfloat16()
    expected = (torch.nn.functional.rms_norm(x.float(), (64,), eps=1e-6) * (1 + norm.weight.float())).bfloat16()
    assert torch.equal(norm(x), expected)


def test_initialised_norms_are_the_identity():
    model = Transformer(preset_config("tiny-gemma"))
    norms = [module for module in model.modules() if isinstance(module, RMSNorm)]
    assert norms and all(isinstance(norm, UnitOffsetRMSNorm) and not norm.weight.any() for norm in norms)
    llama = Transformer(preset_config("tiny-llama"))
    assert all(bool((module.weight == 1).all()) for module in llama.modules() if isinstance(module, RMSNorm))
