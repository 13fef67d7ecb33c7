"""The adapter files of a PEFT fine-tune (DESIGN.md §1): adapter.safetensors holds the method's
tensors under lmforge names (prefixes folded), adapter.json the method, its config, the base
model's fingerprint and the format. Both are written atomically, adapter.json last, so a
directory with an adapter.json has complete tensors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.atomic import atomic_file, atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import CHECKPOINT
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.peft import SPECS, PeftConfig, applied_method, apply_peft, base_state, peft_state

ADAPTER_FORMAT = "lmforge.adapter.v1"
ADAPTER_CONFIG_FILE = "adapter.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"

# A checkpoint directory that also holds an adapter: what `convert from-peft` (and a PEFT fine-tune) writes.
ADAPTER_CHECKPOINT = dataclasses.replace(
    CHECKPOINT, name="an lmforge checkpoint", files=(*CHECKPOINT.files, ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE))


@dataclass(frozen=True)
class AdapterRecord:
    """What adapter.json says."""

    method: str
    config: PeftConfig
    fingerprint: str  # base_fingerprint of the model the adapter was trained on
    base: str | None  # where that base came from, for messages
    merged: bool = False  # the checkpoint's model.safetensors already holds the update (LoRA, --merge true)


def base_fingerprint(config: ModelConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 over config.json's model fields and every base tensor's name, dtype, shape and bytes:
    which base model an adapter belongs to. It reads every byte, about 1 s per GB of weights."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def write_adapter(directory: str | Path, method: str, config: PeftConfig, state: dict[str, torch.Tensor],
                  fingerprint: str, base: str | None = None, merged: bool = False) -> None:
    """`save_adapter` for tensors that are not in a model (a conversion need not build one)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    with atomic_file(directory / ADAPTER_WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    record = {"format": ADAPTER_FORMAT, "method": method, "config": dataclasses.asdict(config),
              "base_fingerprint": fingerprint, "base": base, "merged": merged}
    atomic_write_text(directory / ADAPTER_CONFIG_FILE, json.dumps(record, indent=2) + "\n")


def save_adapter(model: Transformer, directory: str | Path, method: str, config: PeftConfig, fingerprint: str,
                 base: str | None = None, merged: bool = False) -> None:
    """Write the model's `method` tensors and adapter.json; `fingerprint` is `base_fingerprint` of
    the base it was applied to, `base` where that base came from (kept for messages), `merged`
    whether the directory's model.safetensors already holds the update."""
    present = applied_method(model)
    if present != method:
        raise LmforgeError(f"save_adapter: the model holds {present or 'no PEFT'} parameters, not {method}'s")
    write_adapter(directory, method, config, peft_state(model), fingerprint, base, merged)


def read_adapter(directory: str | Path) -> AdapterRecord:
    """adapter.json of `directory`, checked: format, method and every config field."""
    path = Path(directory) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise LmforgeError(f"{directory}: no {ADAPTER_CONFIG_FILE}; not the output of a lora, adapter or prefix fine-tune")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(values, dict) or values.get("format") != ADAPTER_FORMAT:
        raise LmforgeError(f"{path}: not an lmforge adapter file (format {ADAPTER_FORMAT} expected)")
    method = values.get("method")
    if method not in SPECS:
        raise LmforgeError(f"{path}: field 'method' is {method!r}; expected one of {', '.join(SPECS)}")
    config_type = SPECS[method].config
    fields = values.get("config")
    known = {field.name for field in dataclasses.fields(config_type)}
    if not isinstance(fields, dict) or set(fields) - known:
        raise LmforgeError(f"{path}: field 'config' must map {config_type.__name__} fields ({', '.join(sorted(known))})")
    try:
        config = config_type(**fields)
    except LmforgeError as error:
        raise LmforgeError(f"{path}: {error}") from None
    fingerprint = values.get("base_fingerprint")
    if not isinstance(fingerprint, str):
        raise LmforgeError(f"{path}: field 'base_fingerprint' is missing")
    merged = values.get("merged", False)
    if not isinstance(merged, bool) or (merged and method != "lora"):
        raise LmforgeError(f"{path}: field 'merged' must be true or false (true only for lora)")
    return AdapterRecord(method, config, fingerprint, values.get("base"), merged)


def read_adapter_state(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise LmforgeError(f"{path}: file not found; {ADAPTER_CONFIG_FILE} needs the adapter's tensors beside it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise LmforgeError(f"{path}: unreadable safetensors file, truncated or corrupt ({error})") from None


def check_adapter_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], method: str, source: str) -> None:
    """Raise unless `state` has exactly the names and shapes of `expected` (the tensors `method`'s config implies)."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (f"missing {', '.join(missing[:3])}" if missing else "",
                                             f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if part)
        raise LmforgeError(f"{source}: tensors do not match the {method} config ({detail})")
    for name, tensor in expected.items():
        if tensor.shape != state[name].shape:
            raise LmforgeError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, "
                               f"the {method} config implies {tuple(tensor.shape)}")


def load_adapter(model: Transformer, directory: str | Path, *, source: str | None = None) -> tuple[str, PeftConfig]:
    """Apply the adapter of `directory` to `model` (the base it was trained on; `source` names where
    the model came from, for messages) and return its method and config. Prefixes load folded.

    Fingerprints cover dtypes: load the adapter onto the base as trained, then convert the model."""
    record = read_adapter(directory)
    actual = base_fingerprint(model.config, base_state(model))
    if actual != record.fingerprint:
        raise LmforgeError(
            f"{Path(directory) / ADAPTER_CONFIG_FILE}: the adapter was trained on base {record.fingerprint[:12]} "
            f"({record.base or 'source not recorded'}), but {source or 'this model'} is base {actual[:12]}; "
            "load it onto that base (merged weights need no adapter; convert dtypes after loading)"
        )
    config = record.config
    if record.method == "prefix":  # the file holds the prefixes as plain tensors, whatever produced them
        config = dataclasses.replace(config, reparameterize=False)
    apply_peft(model, record.method, config)
    expected = {name: tensor for name, tensor in model.state_dict().items() if SPECS[record.method].owns(name)}
    state = read_adapter_state(directory)
    check_adapter_state(expected, state, record.method, str(Path(directory) / ADAPTER_WEIGHTS_FILE))
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(state[name])
    return record.method, record.config


def load_finetuned(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """The model of any checkpoint directory, as every command runs it: a fine-tune's adapter
    (adapter.json, unless its update is already merged into model.safetensors) applied onto the
    weights it was trained with, then moved to `dtype`; a quantized checkpoint's integer layers."""
    from lmforge.model.checkpoint_directory import load_checkpoint
    from lmforge.quant.apply import cast_floats, load_quantized, read_quantization

    directory = Path(directory)
    quantized = read_quantization(directory) is not None
    adapter = (directory / ADAPTER_CONFIG_FILE).is_file() and not read_adapter(directory).merged
    if not adapter:
        return load_quantized(directory, device, dtype) if quantized else load_checkpoint(directory, device, dtype)
    model = load_quantized(directory, device) if quantized else load_checkpoint(directory, device)
    load_adapter(model, directory, source=str(directory / "model.safetensors"))
    if dtype is None:
        return model
    return cast_floats(model, dtype) if quantized else model.to(dtype)
