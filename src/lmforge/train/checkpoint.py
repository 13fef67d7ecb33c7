"""Training checkpoints under OUT/train/step-NNNNNN/: everything needed to continue exactly.

    model.safetensors   weights (fp32 master copy)
    optimizer.pt        AdamW state (tensors and numbers only; loaded with weights_only=True)
    rng.pt              CPU and CUDA random generator states
    state.json          step, data position, counters, and the sha256 of every file above

A checkpoint is assembled in a hidden temporary directory and renamed into place, so a crash
(even SIGKILL) mid-save leaves the previous one intact; state.json's checksums catch a directory
damaged later, and loading falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.atomic import atomic_directory
from lmforge.errors import LmforgeError, warn

STATE_FILE = "state.json"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TrainState:
    step: int
    state: dict  # JSON-serialisable: data position, counters, model config
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict
    path: Path


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(directory: Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict,
                     state: dict, keep_last: int) -> Path:
    from safetensors.torch import save_file

    target = directory / f"{PREFIX}{step:06d}"
    with atomic_directory(target) as staging:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(staging / "model.safetensors"))
        torch.save(optimizer_state, staging / "optimizer.pt")
        torch.save(rng_state(), staging / "rng.pt")
        files = {name: _sha256(staging / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt")}
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **state, "files": files}, indent=2))
        for file in staging.iterdir():  # durable before the rename makes it visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    for old in list_checkpoints(directory)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, newest first (hidden temporary directories are never listed)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def _verify(path: Path) -> dict:
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable {STATE_FILE} ({error})") from None
    for name, digest in state.get("files", {}).items():
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        if _sha256(path / name) != digest:
            raise ValueError(f"{name} does not match its checksum")
    if set(state.get("files", {})) != {"model.safetensors", "optimizer.pt", "rng.pt"}:
        raise ValueError("incomplete file list")
    return state


def load_latest_train_state(directory: Path) -> TrainState | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    from safetensors.torch import load_file

    for path in list_checkpoints(directory):
        try:
            state = _verify(path)
            model = load_file(str(path / "model.safetensors"))
            optimizer = torch.load(path / "optimizer.pt", weights_only=True)
            rng = torch.load(path / "rng.pt", weights_only=True)
        except Exception as error:  # any damage: fall back to the previous checkpoint
            warn(f"checkpoint {path} is damaged ({error}); trying the previous one")
            continue
        return TrainState(step=state["step"], state=state, model=model, optimizer=optimizer, rng=rng, path=path)
    if list_checkpoints(directory):
        raise LmforgeError(f"{directory}: every checkpoint is damaged; nothing to resume from")
    return None
