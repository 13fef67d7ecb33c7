"""Convert whole directories: a Hugging Face model (config.json + safetensors, sharded or not,
tokenizer files) ⇄ an lmforge checkpoint directory (DESIGN.md §1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmforge.atomic import atomic_directory, atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.interop.hf_config import config_from_hf, config_to_hf, hf_model_type
from lmforge.interop.hf_weights import weights_from_hf, weights_to_hf
from lmforge.model.checkpoint_directory import (
    CHECKPOINT, CONFIG_FILE, GENERATION_FILE, INDEX_FILE, TOKENIZER_FILE, WEIGHTS_FILE, build_model, load_weights,
    read_config, read_generation, save_checkpoint, save_weights,
)
from lmforge.output_directory import OutputKind, check_output_directory


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]


def _is_hf_directory(directory: Path) -> bool:
    """True when `directory` has a Hugging Face config.json (one with a model_type)."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


# What `to_hf` writes: `--overwrite` replaces only such a directory.
HF_DIRECTORY = OutputKind(
    "a Hugging Face model directory",
    files=(CONFIG_FILE, "generation_config.json", WEIGHTS_FILE, INDEX_FILE, "model-*-of-*.safetensors", TOKENIZER_FILE,
           "tokenizer_config.json", GENERATION_FILE),
    finished=_is_hf_directory,
)


def from_hf(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise LmforgeError(f"{src}: not a directory")
    hf = _read_json(src / "config.json")
    config = config_from_hf(hf, str(src / "config.json"))
    check_output_directory(dst, CHECKPOINT, overwrite=overwrite, option="destination", sources=[src])
    state = weights_from_hf(load_weights(src), hf["model_type"], config)
    model = build_model(config, state, str(src))

    generation_config = _read_json(src / "generation_config.json") if (src / "generation_config.json").exists() else {}
    stop_ids = _ids(generation_config.get("eos_token_id", hf.get("eos_token_id")))
    generation = {"stop_token_ids": stop_ids}
    if (bos := generation_config.get("bos_token_id", hf.get("bos_token_id"))) is not None:
        generation["bos_token_id"] = bos
    tokenizer_config = _read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    if isinstance(tokenizer_config.get("chat_template"), str):
        generation["chat_template"] = tokenizer_config["chat_template"]
    with atomic_directory(dst) as staging:
        tokenizer = None
        if (src / TOKENIZER_FILE).is_file():
            tokenizer = src / TOKENIZER_FILE
        elif (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
            from lmforge.tokenizer import load_tokenizer

            load_tokenizer(src).save(staging / TOKENIZER_FILE)
        save_checkpoint(model, staging, tokenizer=tokenizer, generation=generation)
    return dst


def to_hf(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    src, dst = Path(src), Path(dst)
    config = read_config(src)
    model_type = hf_model_type(config)
    check_output_directory(dst, HF_DIRECTORY, overwrite=overwrite, option="destination", sources=[src])
    state = weights_to_hf(load_weights(src), model_type)
    generation = read_generation(src)
    stop_ids = generation.get("stop_token_ids", [])
    extra = {}
    if stop_ids:
        extra["eos_token_id"] = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    if "bos_token_id" in generation:
        extra["bos_token_id"] = generation["bos_token_id"]
    with atomic_directory(dst) as staging:
        save_weights(state, staging)
        atomic_write_text(staging / "config.json", json.dumps(config_to_hf(config, model_type, extra), indent=2) + "\n")
        atomic_write_text(staging / "generation_config.json", json.dumps(extra, indent=2) + "\n")
        if (src / TOKENIZER_FILE).is_file():
            shutil.copyfile(src / TOKENIZER_FILE, staging / TOKENIZER_FILE)
            tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.context_length}
            if "chat_template" in generation:
                tokenizer_config["chat_template"] = generation["chat_template"]
            atomic_write_text(staging / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2) + "\n")
        if (src / GENERATION_FILE).is_file():
            shutil.copyfile(src / GENERATION_FILE, staging / GENERATION_FILE)
    return dst
