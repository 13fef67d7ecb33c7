"""Quantization-aware training: the linear layers a scheme would quantize compute with fake-quantized
weights (`schemes.fake_quantize`: exactly the weights the quantized model will hold, the gradient
passed straight through to the full-precision ones), and for w8a8 with fake-quantized inputs (as
the integer kernel rounds them), from a chosen step on. Parameter names do not change; at the end
`apply.quantize_model` turns the trained weights into the real layers."""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.transformer import Transformer
from lmforge.quant.apply import targets
from lmforge.quant.linear import input_row_groups
from lmforge.quant.schemes import QuantScheme, fake_quantize


def fake_quantize_inputs(x: torch.Tensor) -> torch.Tensor:
    """`x` as a w8a8 layer's kernel reads it: each group of rows that shares a scale there
    (`input_row_groups`) rounded to 7-bit unsigned codes with the scale and zero point fbgemm's
    dynamic quantization chooses for it (its range, widened to hold 0); the gradient passes
    straight through."""
    flat = x.reshape(-1, x.shape[-1])
    groups = input_row_groups(flat.detach())
    parts = []
    for rows in groups:
        part = flat if len(groups) == 1 else flat[rows]
        scale, zero = torch._choose_qparams_per_tensor(part.detach().float(), True)  # reduce_range: 0..127
        parts.append(torch.fake_quantize_per_tensor_affine(part, scale, zero, 0, 127))
    if len(groups) == 1:
        return parts[0].reshape(x.shape)
    return torch.cat(parts)[torch.cat(groups).argsort()].reshape(x.shape)


def _fake_quantized_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not self.qat.enabled:
        return F.linear(x, self.weight, self.bias)
    if self.qat.scheme.activations == "int8":
        x = fake_quantize_inputs(x)
    return F.linear(x, fake_quantize(self.weight, self.qat.scheme), self.bias)


class QatSwitch:
    """Turns the fake quantization of a model's layers on and off (off before --qat-start-step)."""

    def __init__(self, scheme: QuantScheme, enabled: bool = True) -> None:
        self.scheme, self.enabled = scheme, enabled

    def at_step(self, step: int, start_step: int) -> None:
        self.enabled = step >= start_step


def apply_qat(model: Transformer, scheme: QuantScheme, *, output: bool = False) -> QatSwitch:
    """Fake-quantize the layers `quantize_model` would quantize; returns their shared switch."""
    switch = QatSwitch(scheme)
    for _, _, layer in targets(model, scheme, output):
        layer.qat = switch
        layer.forward = MethodType(_fake_quantized_forward, layer)
    return switch
