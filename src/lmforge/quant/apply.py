"""Quantizing a model from outside (as `peft/` and `distributed/` change one): every linear layer of
the blocks becomes a `QuantizedLinear`, and optionally the output layer; the checkpoint records the
scheme in config.json under "quantization", so loading builds the same layers before the weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import CONFIG_FILE
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.quant.linear import NativeLinear, QuantizedLinear, fuse_shared_inputs
from lmforge.quant.schemes import QuantScheme


def targets(model: Transformer, scheme: QuantScheme, output: bool) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of each linear layer to quantize: the blocks' (and the output layer
    when asked: tied to the embedding, it gets codes of its own and the embedding stays as it is),
    those whose inputs the scheme's groups tile."""
    found = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) in (nn.Linear, NativeLinear) and (full.startswith("blocks.") or (output and full == "lm_head")):
                if scheme.fits(child.in_features):
                    found.append((parent, name, child))
    return found


def quantize_model(model: Transformer, scheme: QuantScheme, *, output: bool = False) -> int:
    """Replace the linear layers in place; returns how many were quantized."""
    chosen = targets(model, scheme, output)
    for parent, name, layer in chosen:
        setattr(parent, name, QuantizedLinear.from_linear(layer, scheme))
    fuse_shared_inputs(model)
    model.quantization = {**scheme.to_dict(), "output": output}
    return len(chosen)


def quantized_skeleton(model: Transformer, quantization: dict) -> None:
    """Empty `QuantizedLinear` layers where a quantized checkpoint has them, before loading its weights."""
    scheme = QuantScheme.from_dict(quantization)
    for parent, name, layer in targets(model, scheme, quantization.get("output", False)):
        setattr(parent, name, QuantizedLinear(layer.in_features, layer.out_features, layer.bias is not None, scheme,
                                              layer.weight.device))
    fuse_shared_inputs(model)
    model.quantization = dict(quantization)


def save_quantized(model: Transformer, directory: str | Path, tokenizer: str | Path | None = None,
                   generation: dict | None = None) -> int:
    """Write a quantized model as a checkpoint directory (config.json last, recording the scheme);
    returns the bytes of its weights."""
    from lmforge.model.checkpoint_directory import model_state, write_checkpoint

    state = model_state(model)
    write_checkpoint(model.config, state, directory, tokenizer, generation, quantization=model.quantization)
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def read_quantization(directory: str | Path) -> dict | None:
    """The "quantization" entry of a checkpoint's config.json, or None for a full-precision one."""
    path = Path(directory) / CONFIG_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quantization = values.get("quantization") if isinstance(values, dict) else None
    if quantization is not None and (not isinstance(quantization, dict) or quantization.get("scheme") not in QuantScheme.KINDS):
        raise LmforgeError(f"{path}: \"quantization\" must name a scheme ({', '.join(QuantScheme.KINDS)}), got {quantization!r}")
    return quantization


def build_quantized(config: ModelConfig, quantization: dict, state: dict[str, torch.Tensor], source: str) -> Transformer:
    """A model with a quantized checkpoint's integer layers and its other weights as stored."""
    model = Transformer(config)
    quantized_skeleton(model, quantization)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (config.tie_embeddings and name == "lm_head.weight")]
    if missing or unexpected:
        raise LmforgeError(f"{source}: the quantized weights do not fit the model ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); re-run `lmforge quantize`")
    model.tie_weights()
    return model


def cast_floats(model: Transformer, dtype: torch.dtype) -> Transformer:
    """`model.to(dtype)` that leaves quantized layers as they are (their scales belong to their codes)."""
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            continue
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(dtype)
    return model


def load_quantized(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """A quantized checkpoint's model: its integer layers as saved, the rest in `dtype`."""
    from lmforge.model.checkpoint_directory import load_weights, read_config

    model = build_quantized(read_config(directory), read_quantization(directory), load_weights(directory), str(directory))
    if dtype is not None:
        cast_floats(model, dtype)
    return model.to(device).eval()
