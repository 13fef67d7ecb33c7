"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP).

Every rank writes its own shards of the model and optimizer in parallel; the checkpoint's metadata
records each tensor by name and global shape, so it loads onto any layout of the same model — a
different data-parallel degree, tensor- or pipeline-parallel cut, or one process — with DCP
moving the pieces. Parameter names are the plain model's (`blocks.5.attention.q_proj.weight`)
whatever the layout, and optimizer state is flattened to one entry a parameter, which is what
makes a different pipeline cut loadable.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from lmforge.errors import LmforgeError
from lmforge.model.checkpoint import model_state
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def save_sharded(directory: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
    """Write this rank's shards into `directory`; every rank must call it."""
    model_state_dict, optimizer_state_dict = get_state_dict(model, optimizer, options=OPTIONS)
    dcp.save({"model": model_state_dict, "optimizer": optimizer_state_dict}, checkpoint_id=str(directory))


def _check_shapes(directory: Path, state: dict) -> None:
    """Name the first tensor that the checkpoint lacks or holds in another shape, before DCP tries."""
    saved = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    for group, tensors in state.items():
        for name, tensor in tensors.items():
            key = f"{group}.{name}"
            if not isinstance(tensor, torch.Tensor):
                continue
            if key not in saved:
                raise LmforgeError(f"{directory}: the checkpoint has no {key}; it was saved from a different model or optimizer")
            shape = tuple(getattr(saved[key], "size", ()))
            if shape != tuple(tensor.shape):
                raise LmforgeError(f"{directory}: {key} was saved with shape {shape}, this run's is {tuple(tensor.shape)}")


def load_sharded(directory: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
    """Fill `model` and `optimizer` (laid out however this run lays them out) from `directory`."""
    model_state_dict, optimizer_state_dict = get_state_dict(model, optimizer, options=OPTIONS)
    state = {"model": model_state_dict, "optimizer": optimizer_state_dict}
    _check_shapes(directory, state)
    dcp.load(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=OPTIONS)


def unsharded_optimizer_state(model: Transformer, optimizer: torch.optim.Optimizer) -> dict:
    """A single process's optimizer state keyed by parameter name: the form any layout can load."""
    return get_optimizer_state_dict(model, optimizer, options=OPTIONS)


def load_unsharded(model: Transformer, optimizer: torch.optim.Optimizer, model_state: dict[str, torch.Tensor],
                   optimizer_state: dict) -> None:
    """Fill a laid-out model and optimizer from whole tensors that every rank holds (a single
    process's checkpoint): each rank cuts out the shards it owns, without communication."""
    model_state_dict, optimizer_state_dict = get_state_dict(model, optimizer, options=OPTIONS)
    for target, source in ((model_state_dict, model_state), (optimizer_state_dict, optimizer_state)):
        for key, value in target.items():
            if key not in source:
                if key == "lm_head.weight" and model.config.tie_embeddings:
                    continue  # stored once, as the embedding
                raise LmforgeError(f"the single-process checkpoint has no {key}")
            whole = source[key]
            if isinstance(value, DTensor):
                value.to_local().copy_(distribute_tensor(whole, value.device_mesh, value.placements, src_data_rank=None).to_local())
            elif isinstance(value, torch.Tensor):
                value.copy_(whole)
            else:
                target[key] = whole
    set_state_dict(model, optimizer, model_state_dict=model_state_dict, optim_state_dict=optimizer_state_dict, options=OPTIONS)


def load_consolidated(directory: Path, config: ModelConfig) -> Transformer:
    """The whole model from a sharded checkpoint, in this process alone (no collectives): how
    rank 0 exports the plain checkpoint directory."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.init_buffers()
    state = {"model": model_state(model)}
    _check_shapes(directory, state)
    dcp.load(state, checkpoint_id=str(directory), no_dist=True)
    return model
