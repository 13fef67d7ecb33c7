"""Training checkpoints under OUT/train/step-NNNNNN/: everything needed to continue exactly.

    model.safetensors   weights (fp32 master copy)
    optimizer.pt        AdamW state (tensors and numbers only; loaded with weights_only=True)
    rng.pt              CPU and CUDA random generator states
    state.json          step, data position, counters, and the sha256 of every file above

A distributed run (several processes) writes instead the shards of `torch.distributed.checkpoint`
(every rank its own, `*.distcp` + `.metadata`) and one `rng-RRRRR.pt` a rank; state.json then says
`"format": "dcp"` and records file sizes (hashing every shard would cost a full read of the model).
Such a checkpoint resumes on any layout of the same model, one process included.

A checkpoint is assembled in a hidden temporary directory and renamed into place, so a crash
(even SIGKILL) mid-save leaves the previous one intact; state.json's checksums catch a directory
damaged later, and loading falls back to the newest checkpoint that verifies. Nothing in a
checkpoint is unpickled beyond plain data (weights_only=True, or DCP metadata's own classes), so a
crafted one is refused as damaged rather than run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.atomic import atomic_directory, atomic_write_text, replace_directory
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError, warn

STATE_FILE = "state.json"
PREFIX = "step-"
PLAIN_FILES = {"model.safetensors", "optimizer.pt", "rng.pt"}


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
    model: dict[str, torch.Tensor] | None  # None for a sharded checkpoint: it loads into the laid-out model
    optimizer: dict | None
    rng: dict | None
    path: Path

    @property
    def sharded(self) -> bool:
        return _is_sharded(self.state)


def _is_sharded(state: dict) -> bool:
    """Whether state.json describes a distributed (DCP) checkpoint."""
    return state.get("format") == "dcp"


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
        for name, value in (("optimizer.pt", optimizer_state), ("rng.pt", rng_state())):
            with open(staging / name, "wb") as handle:  # a file object: a failed write surfaces as its OSError
                torch.save(value, handle)
        files = {name: _sha256(staging / name) for name in ("model.safetensors", "optimizer.pt", "rng.pt")}
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **state, "files": files}, indent=2))
        for file in staging.iterdir():  # durable before the rename makes it visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _prune(directory, keep_last)
    return target


def _prune(directory: Path, keep_last: int) -> None:
    for old in list_checkpoints(directory)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_file(rank: int) -> str:
    return f"rng-{rank:05d}.pt"


def save_sharded_train_state(directory: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict, keep_last: int, topology: Topology) -> Path:
    """Every rank writes its shards and RNG state into a staging directory; once all are done,
    rank 0 adds state.json and renames it into place. Collective: every rank must call it."""
    # Imported here, as in the functions below: DCP takes a second to import and one process
    # training from scratch never needs it.
    from lmforge.distributed.sharded_checkpoint import save_sharded

    target = directory / f"{PREFIX}{step:06d}"
    staging = directory / f".{target.name}.partial"
    if topology.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    topology.barrier()
    save_sharded(staging, model, optimizer)
    with open(staging / _rng_file(topology.rank), "wb") as handle:
        torch.save(rng_state(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    topology.barrier()
    if topology.is_main:
        files = {path.name: path.stat().st_size for path in staging.iterdir()}
        atomic_write_text(staging / STATE_FILE, json.dumps({"step": step, **state, "format": "dcp", "files": files}, indent=2))
        replace_directory(staging, target)
        _prune(directory, keep_last)
    topology.barrier()
    return target


def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """A single process's optimizer state (keyed by position in `optimizer`) keyed by parameter name
    instead, the form a sharded layout can take; call it before the model is laid out."""
    from lmforge.distributed.sharded_checkpoint import unsharded_optimizer_state

    optimizer.load_state_dict(state)
    return unsharded_optimizer_state(model, optimizer)


def restore_train_state(resumed: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        topology: Topology, optimizer_by_name: dict | None = None) -> None:
    """Weights, optimizer state and RNG from any checkpoint into this run's layout: shards are
    redistributed by DCP; a single process's whole tensors are cut into this rank's shards (with
    the optimizer state from `optimizer_state_by_name`). The RNG comes back exactly where the
    rank existed when the checkpoint was saved."""
    from lmforge.distributed.sharded_checkpoint import load_sharded, load_unsharded

    if resumed.sharded:
        load_sharded(resumed.path, model, optimizer)
        rng_path = resumed.path / _rng_file(topology.rank)
        if rng_path.is_file():
            restore_rng(torch.load(rng_path, weights_only=True))
        return
    if topology.distributed:
        load_unsharded(model, optimizer, resumed.model, optimizer_by_name)
    else:
        model.load_state_dict(resumed.model, strict=False)
        optimizer.load_state_dict(resumed.optimizer)
    restore_rng(resumed.rng)


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
    if type(state.get("step") if isinstance(state, dict) else None) is not int:
        raise ValueError(f"{STATE_FILE} has no integer step")
    sharded = _is_sharded(state)
    for name, expected in state.get("files", {}).items():
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        found = (path / name).stat().st_size if sharded else _sha256(path / name)
        if found != expected:
            raise ValueError(f"{name} does not match its {'size' if sharded else 'checksum'}")
    if not sharded and set(state.get("files", {})) != PLAIN_FILES:
        raise ValueError("incomplete file list")
    if sharded and ".metadata" not in state.get("files", {}):
        raise ValueError("no .metadata file in the file list")
    return state


def load_latest_train_state(directory: Path) -> TrainState | None:
    """The newest checkpoint that verifies; damaged ones are reported and skipped."""
    from safetensors.torch import load_file

    for path in list_checkpoints(directory):
        try:
            state = _verify(path)
            if _is_sharded(state):
                from lmforge.distributed.sharded_checkpoint import check_sharded

                check_sharded(path)
                return TrainState(step=state["step"], state=state, model=None, optimizer=None, rng=None, path=path)
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
