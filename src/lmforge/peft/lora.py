"""LoRA (Hu et al. 2021): a frozen linear layer y = Wx gains a trainable low-rank update,
y = Wx + s·B(A(x)) with A [r, in], B [out, r] and s = alpha / r (alpha / √r with rsLoRA, Kalajdzievski
2023). B starts at zero, so training starts from the base model's function.

The update is added by a forward hook; A and B are submodules of the linear layer
(`blocks.0.attention.q_proj.lora_A.weight`), so the base parameters keep their names.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.bounds import Bound, above, at_least, between, check_fields
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.quant.linear import QuantizedLinear

ALL_LINEAR = "all-linear"


@dataclass
class LoraConfig:
    """Which linear layers get a low-rank update, and its rank and scale: the `--lora.*` options."""

    r: int = 8
    """Rank of the update B·A."""
    alpha: float = 16.0
    """The update is scaled by alpha / r (alpha / √r with rslora)."""
    dropout: float = 0.0
    """Dropout on the input of the update, during training."""
    targets: tuple[str, ...] | str = ("q_proj", "v_proj")
    """Linear layers to adapt: last names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj),
    fnmatch patterns on full names (blocks.0.*), or all-linear (every linear layer of the blocks)."""
    rslora: bool = False
    """Scale by alpha / √r instead of alpha / r, so that higher ranks keep learning."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"r": at_least(1), "alpha": above(0), "dropout": between(0, 1, high_open=True)}

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):  # "q_proj,v_proj" from a recipe or the command line
            self.targets = tuple(target.strip() for target in self.targets.split(",") if target.strip())
        self.targets = tuple(self.targets)
        check_fields(self, "--lora.{}")
        if not isinstance(self.r, int):
            raise LmforgeError(f"--lora.r must be a whole number, got {self.r!r}")
        if not self.targets:
            raise LmforgeError("--lora.targets is empty; name the linear layers to adapt, e.g. q_proj,v_proj, or all-linear")
        if ALL_LINEAR in self.targets and len(self.targets) > 1:
            raise LmforgeError(f"--lora.targets: {ALL_LINEAR} already covers every linear layer; give it alone")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoraUpdate:
    """The forward hook that adds scale · B(A(dropout(x))) to its linear layer's output."""

    def __init__(self, scale: float, dropout: float) -> None:
        self.scale, self.dropout = scale, dropout
        self.handle = None
        self.enabled = True

    def __call__(self, linear: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return output
        x = F.dropout(args[0], self.dropout, linear.training)
        return output + linear.lora_B(linear.lora_A(x)) * self.scale


def owns(name: str) -> bool:
    """True for the name of a parameter LoRA added."""
    return ".lora_A." in name or ".lora_B." in name


def _matches(name: str, target: str) -> bool:
    """A target fits a full module name, or a dot-separated tail of it ("q_proj", "attention.*")."""
    return target == ALL_LINEAR or fnmatch.fnmatchcase(name, target) or fnmatch.fnmatchcase(name, f"*.{target}")


def target_linears(model: Transformer, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """The blocks' linear layers the targets name, by full name; a target that names none is an error."""
    linears = {f"blocks.{name}": module for name, module in model.blocks.named_modules()
               if isinstance(module, (nn.Linear, QuantizedLinear))}
    for target in targets:
        if not any(_matches(name, target) for name in linears):
            kinds = sorted({re.sub(r"\.\d+(?=\.|$)", ".*", name.split(".", 2)[2]) for name in linears})  # experts.*.up_proj
            raise LmforgeError(
                f"--lora.targets: {target!r} matches no linear layer; this model's blocks have {', '.join(kinds)} "
                f"(give their last names, fnmatch patterns on full names such as blocks.0.*, or {ALL_LINEAR})"
            )
    return {name: linear for name, linear in linears.items() if any(_matches(name, target) for target in targets)}


def apply_lora(model: Transformer, config: LoraConfig) -> None:
    """Give each target linear layer zero-initialised LoRA matrices and the hook that adds their update."""
    for linear in target_linears(model, config.targets).values():
        weight = linear.scales if isinstance(linear, QuantizedLinear) else linear.weight  # QLoRA: fp32 matrices
        options = {"device": weight.device, "dtype": weight.dtype}
        linear.lora_A = nn.Linear(linear.in_features, config.r, bias=False, **options)  # Kaiming-uniform, as PEFT
        linear.lora_B = nn.Linear(config.r, linear.out_features, bias=False, **options)
        nn.init.zeros_(linear.lora_B.weight)
        linear.lora_update = LoraUpdate(config.scale, config.dropout)
        linear.lora_update.handle = linear.register_forward_hook(linear.lora_update)


@torch.no_grad()
def merge_lora(model: Transformer) -> None:
    """Fold s·B·A into each adapted weight (computed in fp32) and remove the LoRA modules and hooks:
    the model is a plain one again, computing the same function. Base parameters stay frozen."""
    linears = [module for module in model.modules() if isinstance(getattr(module, "lora_update", None), LoraUpdate)]
    if not linears:
        raise LmforgeError("merge_lora: the model has no LoRA layers; apply or load a LoRA adapter first")
    for linear in linears:
        update = linear.lora_B.weight.float() @ linear.lora_A.weight.float() * linear.lora_update.scale
        if isinstance(linear, QuantizedLinear):  # rounded into the codes: close to, not exactly, the adapted function
            linear.requantize_(linear.dequantized_weight() + update)
        else:
            linear.weight.copy_(linear.weight.float() + update)
        linear.lora_update.handle.remove()
        del linear.lora_A, linear.lora_B, linear.lora_update


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """The base model's function while inside: every LoRA update is switched off (a reference
    model for preference training without a second copy of the weights)."""
    updates = [module.lora_update for module in model.modules() if getattr(module, "lora_update", None) is not None]
    for update in updates:
        update.enabled = False
    try:
        yield
    finally:
        for update in updates:
            update.enabled = True
