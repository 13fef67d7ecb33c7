"""The checkpoint directory (DESIGN.md §1): config.json + model.safetensors (+ index when sharded)
+ tokenizer.json + generation.json. Every file is written atomically; weights never use pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lmforge.atomic import atomic_file, atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.output_directory import OutputKind

FORMAT = "lmforge.model.v1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
GENERATION_FILE = "generation.json"
DEFAULT_SHARD_BYTES = 4 * 1024**3


def _is_checkpoint(directory: Path) -> bool:
    """True when `directory` has an lmforge model config (the file `save_checkpoint` writes last)."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


# What `save_checkpoint` writes, and a fine-tune's adapter or classification head beside it: a
# command that makes checkpoints may replace only such a directory.
CHECKPOINT = OutputKind(
    "an lmforge checkpoint",
    files=(CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE, "model-*-of-*.safetensors", TOKENIZER_FILE, GENERATION_FILE,
           "adapter.json", "adapter.safetensors", "classifier.json", "classifier.safetensors"),
    finished=_is_checkpoint,
)


def read_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise LmforgeError(f"{directory}: not a checkpoint directory (no {CONFIG_FILE})")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if values.get("format") != FORMAT:
        hint = " (a Hugging Face directory: run `lmforge convert from-hf` first)" if "model_type" in values else ""
        raise LmforgeError(f"{path}: not an lmforge model config{hint}")
    return ModelConfig.from_dict(values["model"], source=str(path))


def write_config(directory: str | Path, config: ModelConfig, quantization: dict | None = None) -> None:
    """config.json; a quantized model's also records its scheme (`lmforge.quant`)."""
    values = {"format": FORMAT, "model": config.to_dict(), **({"quantization": quantization} if quantization else {})}
    atomic_write_text(Path(directory) / CONFIG_FILE, json.dumps(values, indent=2) + "\n")


def save_weights(state: dict[str, torch.Tensor], directory: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """One model.safetensors, or numbered shards plus a Hugging Face-style index when larger."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in [directory / INDEX_FILE, *directory.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        with atomic_file(directory / WEIGHTS_FILE) as temporary:
            save_file(shards[0], str(temporary), metadata={"format": "pt"})
        return
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        with atomic_file(directory / filename) as temporary:
            save_file(shard, str(temporary), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    atomic_write_text(directory / INDEX_FILE, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (directory / WEIGHTS_FILE).unlink(missing_ok=True)


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of model.safetensors or of every shard named by model.safetensors.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if (directory / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise LmforgeError(f"{directory / INDEX_FILE}: not a safetensors index ({error})") from None
        files = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        pickled = [name for name in ("pytorch_model.bin", "model.pt") if (directory / name).exists()]
        hint = f" ({pickled[0]} is a pickle; lmforge reads only safetensors)" if pickled else ""
        raise LmforgeError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    state: dict[str, torch.Tensor] = {}
    for filename in files:
        path = directory / filename
        if not path.is_file():
            raise LmforgeError(f"{path}: missing weight shard named by {INDEX_FILE}")
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as error:
            raise LmforgeError(f"{path}: unreadable safetensors file, truncated or corrupt ({error})") from None
    return state


def model_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The state to save: a tied head is the embedding, so it is stored once."""
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def check_state(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise unless `state` holds exactly the tensors, in the shapes, that `config` implies."""
    with torch.device("meta"):
        expected = model_state(Transformer(config))
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = (f"missing {', '.join(missing[:5])}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(unexpected[:5])}" if unexpected else "")
        raise LmforgeError(f"{source}: weights do not match config.json ({detail})")
    for name, parameter in expected.items():
        if tuple(state[name].shape) != tuple(parameter.shape):
            raise LmforgeError(f"{source}: tensor {name} has shape {tuple(state[name].shape)}, config.json implies {tuple(parameter.shape)}")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], source: str,
                device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """A model with exactly `state`'s weights, allocated once (no random init to overwrite)."""
    check_state(config, state, source)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    model.tie_weights()
    model.init_buffers()
    model.load_state_dict(state, strict=False)
    if dtype is not None:
        model.to(dtype)
    return model


def load_checkpoint(directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """The model of a checkpoint directory, for inference; weights holding NaN/inf are refused, as
    every output of the model would be NaN."""
    config = read_config(directory)
    state = load_weights(directory)
    broken = next((name for name, tensor in state.items() if not bool(tensor.isfinite().all())), None)
    if broken is not None:
        raise LmforgeError(
            f"{directory}: tensor {broken} holds NaN/inf, so the model computes nothing but NaN "
            "(a run that diverged?); use an earlier checkpoint"
        )
    return build_model(config, state, str(directory), device, dtype)


def save_checkpoint(model: Transformer, directory: str | Path, tokenizer: str | Path | None = None,
                    generation: dict | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write weights first and config.json last, so a directory with a config has complete weights."""
    write_checkpoint(model.config, model_state(model), directory, tokenizer, generation, max_shard_bytes)


def write_checkpoint(config: ModelConfig, state: dict[str, torch.Tensor], directory: str | Path,
                     tokenizer: str | Path | None = None, generation: dict | None = None,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES, quantization: dict | None = None) -> None:
    """`save_checkpoint` for weights that are not in a model (a conversion need not build one)."""
    directory = Path(directory)
    save_weights(state, directory, max_shard_bytes)
    if tokenizer is not None and Path(tokenizer).resolve() != (directory / TOKENIZER_FILE).resolve():
        with atomic_file(directory / TOKENIZER_FILE) as temporary:
            shutil.copyfile(tokenizer, temporary)
    if generation is not None:
        atomic_write_text(directory / GENERATION_FILE, json.dumps(generation, indent=2) + "\n")
    write_config(directory, config, quantization)


def read_generation(directory: str | Path) -> dict:
    path = Path(directory) / GENERATION_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
