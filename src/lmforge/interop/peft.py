"""Hugging Face PEFT's LoRA directories ⇄ lmforge LoRA adapters, for the llama, qwen2 and gemma3 families.

PEFT saves adapter_config.json and adapter_model.safetensors, whose keys are
`base_model.model.<HF module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]: the matrices
lmforge keeps as `<lmforge module>.lora_A.weight` / `.lora_B.weight`, with the same scale (alpha / r,
or alpha / √r with use_rslora). Module names map through hf_weights' tables. GPT-2 is refused:
Hugging Face fuses its q, k and v into one Conv1D (c_attn), where LoRAs of the separate
projections are not one rank-r LoRA.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import torch

from lmforge.atomic import atomic_directory, atomic_file, atomic_write_text
from lmforge.errors import LmforgeError, warn
from lmforge.interop.hf_config import hf_model_type
from lmforge.interop.hf_weights import weights_from_hf, weights_to_hf
from lmforge.model.checkpoint_directory import CHECKPOINT, CONFIG_FILE, load_weights, read_config
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.output_directory import OutputKind, check_output_directory
from lmforge.peft import apply_peft, peft_state
from lmforge.peft.files import (
    ADAPTER_CHECKPOINT, ADAPTER_CONFIG_FILE, base_fingerprint, check_adapter_state, read_adapter, read_adapter_state,
    write_adapter,
)
from lmforge.peft.lora import LoraConfig, target_linears

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<matrix>lora_A|lora_B)\.weight")
_PLACEHOLDER = torch.empty(0)  # the name tables only rename, so any tensor stands in for a weight

# PEFT settings lmforge's LoRA has no counterpart for; None, False, "none", [] and {} mean off.
_UNSUPPORTED = {
    "use_dora": "DoRA magnitude vectors",
    "bias": "trained biases",
    "lora_bias": "a bias on lora_B",
    "modules_to_save": "fully trained extra modules",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "fan_in_fan_out": "Conv1D-layout (transposed) weights",
    "target_parameters": "LoRA on bare parameters",
    "trainable_token_indices": "trained token embeddings",
    "layer_replication": "replicated layers",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA",
}
# Initialisations that rewrite the base weights, so the adapter only fits the rewritten base.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def _is_peft_directory(directory: Path) -> bool:
    return (directory / PEFT_CONFIG_FILE).is_file()


# What `to_peft` writes: `--overwrite` replaces only such a directory (README.md: PEFT's own saves carry one).
PEFT_DIRECTORY = OutputKind("a Hugging Face PEFT adapter directory",
                            files=(PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, "README.md"), finished=_is_peft_directory)


def _model_type(config: ModelConfig) -> str:
    """The Hugging Face architecture whose module names the adapter uses; GPT-2 is refused (module docstring)."""
    model_type = hf_model_type(config)
    if model_type == "gpt2":
        raise LmforgeError("PEFT export/import of GPT-2 LoRA is not supported: Hugging Face fuses q, k and v into "
                           "one Conv1D (c_attn); use a llama, qwen2 or gemma3 model")
    return model_type


def _hf_module(module: str, model_type: str) -> str:
    """blocks.0.attention.q_proj → model.layers.0.self_attn.q_proj."""
    (name,) = weights_to_hf({f"{module}.weight": _PLACEHOLDER}, model_type)
    return name.removesuffix(".weight")


def _lmforge_module(module: str, model_type: str, config: ModelConfig, source: str) -> str:
    """model.layers.0.self_attn.q_proj → blocks.0.attention.q_proj; a module outside the blocks is an error."""
    # gemma3's table also reads the text model of a multimodal checkpoint (model.language_model.*)
    table = "gemma3" if model_type == "gemma3_text" else model_type
    try:
        names = list(weights_from_hf({f"{module}.weight": _PLACEHOLDER}, table, config))
    except LmforgeError:
        names = []
    if len(names) != 1 or not names[0].startswith("blocks."):
        raise LmforgeError(f"{source}: the adapter adapts {module}, which is not a linear layer of a {model_type} "
                           "block; lmforge's LoRA covers the blocks' linear layers only")
    return names[0].removesuffix(".weight")


def _modules(state: dict[str, torch.Tensor], source: str) -> list[str]:
    """The lmforge modules of a LoRA state (names `<module>.lora_A.weight`, `<module>.lora_B.weight`)."""
    modules = set()
    for name in state:
        module, _, matrix = name.removesuffix(".weight").rpartition(".")
        if not name.endswith(".weight") or matrix not in ("lora_A", "lora_B"):
            raise LmforgeError(f"{source}: tensor {name} is not a LoRA matrix (<module>.lora_A.weight or .lora_B.weight)")
        modules.add(module)
    return sorted(modules)


def _target_modules(modules: list[str], n_layers: int) -> list[str] | str:
    """PEFT's target_modules: last names when every layer has the same ones, else a regex of the exact names."""
    leaves = sorted({module.rsplit(".", 1)[1] for module in modules})
    if len(modules) == len(leaves) * n_layers:
        return leaves
    return "|".join(re.escape(module) for module in modules)  # PEFT full-matches a string against module names


def export_lora(model_or_state: Transformer | dict[str, torch.Tensor], config: ModelConfig, lora_config: LoraConfig,
                dst: str | Path, base_model_name_or_path: str | None = None) -> None:
    """Write adapter_config.json and adapter_model.safetensors in PEFT's layout into `dst`, from a
    model with LoRA applied or its `peft_state`, for the Hugging Face export of `config`'s base."""
    from safetensors.torch import save_file

    model_type = _model_type(config)
    state = peft_state(model_or_state) if isinstance(model_or_state, Transformer) else model_or_state
    modules = {module: _hf_module(module, model_type) for module in _modules(state, "export_lora")}
    tensors = {}
    for name, tensor in state.items():
        module, matrix, _ = name.rsplit(".", 2)
        tensors[f"base_model.model.{modules[module]}.{matrix}.weight"] = tensor.detach().cpu().contiguous()
    alpha = int(lora_config.alpha) if float(lora_config.alpha).is_integer() else lora_config.alpha
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": lora_config.r, "lora_alpha": alpha, "lora_dropout": lora_config.dropout,
        "target_modules": _target_modules(sorted(modules.values()), config.n_layers), "use_rslora": lora_config.rslora,
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
        "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }
    dst = Path(dst)
    with atomic_file(dst / PEFT_WEIGHTS_FILE) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    atomic_write_text(dst / PEFT_CONFIG_FILE, json.dumps(adapter_config, indent=2) + "\n")


def _read_peft_config(path: Path) -> dict:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found; a PEFT adapter directory holds {PEFT_CONFIG_FILE}") from None
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(values, dict):
        raise LmforgeError(f"{path}: not a PEFT adapter config (a JSON object expected)")
    if values.get("peft_type") != "LORA":
        raise LmforgeError(f"{path}: peft_type {values.get('peft_type')!r} is not supported; only LORA adapters convert")
    if values.get("task_type") not in (None, "CAUSAL_LM"):
        raise LmforgeError(f"{path}: task_type {values['task_type']!r} is not supported; only CAUSAL_LM adapters convert")
    for key, what in _UNSUPPORTED.items():
        if values.get(key) not in (None, False, "none", [], {}):
            raise LmforgeError(f"{path}: '{key}: {json.dumps(values[key])}' is not supported (lmforge's LoRA has no {what})")
    init = values.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise LmforgeError(f"{path}: init_lora_weights {init!r} rewrote the base weights, which lmforge does not have; "
                           "save the adapter converted to plain LoRA (PEFT's path_initial_model_for_weight_conversion)")
    return values


def _targets(model: Transformer, modules: list[str]) -> tuple[str, ...]:
    """lmforge targets selecting exactly `modules`: their last names when those do, else the full names."""
    leaves = tuple(sorted({module.rsplit(".", 1)[1] for module in modules}))
    return leaves if sorted(target_linears(model, leaves)) == modules else tuple(modules)


def import_lora(peft_dir: str | Path, base_checkpoint: str | Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """A PEFT LoRA directory as lmforge's LoraConfig and tensors (lmforge names), checked against the
    lmforge checkpoint `base_checkpoint` of the model it was trained on."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    peft_dir = Path(peft_dir)
    values = _read_peft_config(peft_dir / PEFT_CONFIG_FILE)
    config = read_config(base_checkpoint)
    model_type = _model_type(config)
    path = peft_dir / PEFT_WEIGHTS_FILE
    if not path.is_file():
        pickled = (peft_dir / "adapter_model.bin").exists()
        raise LmforgeError(f"{path}: file not found" + (" (adapter_model.bin is a pickle; lmforge reads only safetensors)"
                                                        if pickled else ""))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise LmforgeError(f"{path}: unreadable safetensors file, truncated or corrupt ({error})") from None
    state = {}
    for key, tensor in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise LmforgeError(f"{path}: tensor {key} is not a LoRA matrix (base_model.model.<module>.lora_A.weight or "
                               ".lora_B.weight); embedding LoRA and other layers are not supported")
        module = _lmforge_module(match["module"], model_type, config, str(path))
        state[f"{module}.{match['matrix']}.weight"] = tensor
    with torch.device("meta"):
        model = Transformer(config)
    try:
        lora_config = LoraConfig(r=values.get("r", 8), alpha=float(values.get("lora_alpha", 8)),
                                 dropout=float(values.get("lora_dropout", 0.0)),
                                 targets=_targets(model, _modules(state, str(path))), rslora=bool(values.get("use_rslora")))
    except LmforgeError as error:
        raise LmforgeError(f"{peft_dir / PEFT_CONFIG_FILE}: {error}") from None
    apply_peft(model, "lora", lora_config)
    check_adapter_state(peft_state(model), state, "lora", str(path))
    return lora_config, state


def to_peft(src: str | Path, dst: str | Path, overwrite: bool = False, base_model_name_or_path: str | None = None) -> Path:
    """The LoRA adapter of checkpoint `src` as a PEFT directory `dst`, for `convert to-hf` of its base."""
    src, dst = Path(src), Path(dst)
    record = read_adapter(src)
    if record.method != "lora":
        raise LmforgeError(f"{src / ADAPTER_CONFIG_FILE}: method is {record.method}; only lora adapters have a "
                           "Hugging Face PEFT layout here")
    config = read_config(src)
    _model_type(config)
    check_output_directory(dst, PEFT_DIRECTORY, overwrite=overwrite, option="destination", sources=[src])
    state = read_adapter_state(src)
    if base_fingerprint(config, load_weights(src)) != record.fingerprint:
        warn(f"{src} holds weights other than the adapter's base (merged ones?); apply {dst} to the base model the "
             f"adapter was trained on ({record.base or 'not recorded'}), not to a Hugging Face export of {src}")
    with atomic_directory(dst) as staging:
        export_lora(state, config, record.config, staging, base_model_name_or_path)
    return dst


def from_peft(peft_dir: str | Path, dst: str | Path, base: str | Path, overwrite: bool = False) -> Path:
    """A checkpoint directory `dst`: the files of the lmforge checkpoint `base` plus the PEFT
    adapter of `peft_dir` as adapter.safetensors + adapter.json (unmerged)."""
    peft_dir, dst, base = Path(peft_dir), Path(dst), Path(base)
    if not peft_dir.is_dir():
        raise LmforgeError(f"{peft_dir}: not a directory")
    check_output_directory(dst, ADAPTER_CHECKPOINT, overwrite=overwrite, option="destination", sources=[peft_dir, base])
    lora_config, state = import_lora(peft_dir, base)
    fingerprint = base_fingerprint(read_config(base), load_weights(base))
    files = [path for path in sorted(base.iterdir())
             if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in CHECKPOINT.files)]
    with atomic_directory(dst) as staging:
        for path in sorted(files, key=lambda path: path.name == CONFIG_FILE):  # config.json, the finishing file, last
            shutil.copyfile(path, staging / path.name)
        write_adapter(staging, "lora", lora_config, state, fingerprint, base=str(base))
    return dst
