"""Quantization-aware training: the linear layers a scheme would quantize compute with fake-quantized
weights (`schemes.fake_quantize`: exactly the weights the quantized model will hold, the gradient
passed straight through to the full-precision ones), from a chosen step on. Parameter names do
not change; at the end `apply.quantize_model` turns the trained weights into the real layers."""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.transformer import Transformer
from lmforge.quant.apply import targets
from lmforge.quant.schemes import QuantScheme, fake_quantize


def _fake_quantized_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = fake_quantize(self.weight, self.qat.scheme) if self.qat.enabled else self.weight
    return F.linear(x, weight, self.bias)


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
