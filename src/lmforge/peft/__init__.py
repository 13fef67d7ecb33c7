"""Parameter-efficient fine-tuning, applied to an unchanged model from outside (as `distributed/` is):
LoRA, bottleneck adapters and prefix tuning add parameters as submodules and act through hooks.
Every base parameter keeps its name and is frozen, so checkpoints, Hugging Face conversion and
FSDP2/DDP see the same model with a few more parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import model_state
from lmforge.model.transformer import Transformer
from lmforge.peft import adapters, lora, prefix
from lmforge.peft.adapters import AdapterConfig
from lmforge.peft.lora import LoraConfig, merge_lora
from lmforge.peft.prefix import PrefixConfig, fold_prefix

PeftConfig = LoraConfig | AdapterConfig | PrefixConfig


@dataclass(frozen=True)
class Method:
    """What the registry knows of a method: its config type, how to apply it, which names are its."""

    config: type
    apply: Callable[[Transformer, PeftConfig], None]
    owns: Callable[[str], bool]  # true for the names of the parameters it adds


SPECS = {
    "lora": Method(LoraConfig, lora.apply_lora, lora.owns),
    "adapter": Method(AdapterConfig, adapters.apply_adapters, adapters.owns),
    "prefix": Method(PrefixConfig, prefix.apply_prefix, prefix.owns),
}
METHODS = tuple(SPECS)


def applied_method(model: Transformer) -> str | None:
    """The method whose parameters the model holds, if any."""
    names = [name for name, _ in model.named_parameters()]
    return next((method for method, spec in SPECS.items() if any(map(spec.owns, names))), None)


def _owner(model: Transformer) -> str:
    method = applied_method(model)
    if method is None:
        raise LmforgeError("the model has no LoRA, adapter or prefix parameters; apply or load a PEFT method first")
    return method


def apply_peft(model: Transformer, method: str, config: PeftConfig) -> list[str]:
    """Freeze every base parameter and add `method`'s; returns the names of the new, trainable ones."""
    if method not in SPECS:
        raise LmforgeError(f"--method {method!r} is not a PEFT method; choose one of {', '.join(METHODS)}")
    if not isinstance(config, SPECS[method].config):
        raise LmforgeError(f"--method {method} takes a {SPECS[method].config.__name__}, got {type(config).__name__}")
    if (present := applied_method(model)) is not None:
        raise LmforgeError(f"--method {method}: the model already has {present} parameters; apply one method to a fresh model")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    SPECS[method].apply(model, config)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def peft_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The method's tensors only, what an adapter file holds; reparameterised prefixes folded."""
    method = _owner(model)
    if method == "prefix":
        return prefix.folded_prefix(model)
    return {name: tensor.detach() for name, tensor in model.state_dict().items() if SPECS[method].owns(name)}


def base_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The base model's tensors as a checkpoint stores them (`model_state`), without the method's."""
    method = applied_method(model)
    state = model_state(model)
    return state if method is None else {name: tensor for name, tensor in state.items() if not SPECS[method].owns(name)}


ADAMW_BYTES = 8  # two fp32 moments a trained parameter


@dataclass(frozen=True)
class TrainableSummary:
    """Training memory of weights, gradients and AdamW state (activations not counted), full vs PEFT."""

    base_parameters: int
    trainable_parameters: int
    full_fine_tuning_bytes: int  # base weights + their gradients + AdamW moments
    peft_bytes: int  # base + added weights + the added ones' gradients and AdamW moments

    @property
    def saved_bytes(self) -> int:
        return self.full_fine_tuning_bytes - self.peft_bytes


def trainable_summary(model: Transformer) -> TrainableSummary:
    """The numbers behind `trainable_report`; a tied embedding is counted once."""
    owns = SPECS[_owner(model)].owns
    base = [p for name, p in model.named_parameters() if not owns(name)]
    added = [p for name, p in model.named_parameters() if owns(name)]
    trainable = [p for p in added if p.requires_grad]

    def size(parameters: list[torch.Tensor]) -> int:
        return sum(p.numel() * p.element_size() for p in parameters)

    def optimizer(parameters: list[torch.Tensor]) -> int:
        return sum(p.numel() for p in parameters) * ADAMW_BYTES

    return TrainableSummary(
        base_parameters=sum(p.numel() for p in base),
        trainable_parameters=sum(p.numel() for p in trainable),
        full_fine_tuning_bytes=2 * size(base) + optimizer(base),
        peft_bytes=size(base) + size(added) + size(trainable) + optimizer(trainable),
    )


def _size(count: float) -> str:
    units, power = ("B", "KiB", "MiB", "GiB"), 0
    while abs(count) >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.1f} {units[power]}"


def trainable_report(model: Transformer, method: str) -> str:
    """A few lines for the log: what trains, and the memory saved against full fine-tuning."""
    summary = trainable_summary(model)
    share = 100 * summary.trainable_parameters / summary.base_parameters
    return (
        f"{method}: {summary.trainable_parameters:,} trainable parameters, {share:.3g} % of the base model's "
        f"{summary.base_parameters:,}\n"
        f"weights + gradients + AdamW moments: {_size(summary.peft_bytes)}, against "
        f"{_size(summary.full_fine_tuning_bytes)} for full fine-tuning "
        f"({_size(summary.saved_bytes)} saved; activations not counted)"
    )


# The adapter files build on the registry above, so they are imported last.
from lmforge.peft.files import base_fingerprint, load_adapter, load_finetuned, save_adapter  # noqa: E402

__all__ = [
    "METHODS", "SPECS", "AdapterConfig", "LoraConfig", "PrefixConfig", "TrainableSummary", "applied_method", "apply_peft",
    "base_fingerprint", "base_state", "fold_prefix", "load_adapter", "merge_lora", "peft_state", "save_adapter",
    "trainable_report", "trainable_summary",
]
