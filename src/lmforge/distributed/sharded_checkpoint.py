"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP).

Every rank writes its own shards of the model and optimizer in parallel; the checkpoint's metadata
records each tensor by name and global shape, so it loads onto any layout of the same model — a
different data-parallel degree, tensor- or pipeline-parallel cut, or one process — with DCP
moving the pieces. Parameter names are the plain model's (`blocks.5.attention.q_proj.weight`)
whatever the layout, and optimizer state is flattened to one entry a parameter, which is what
makes a different pipeline cut loadable.

Reading a checkpoint never runs code from it: torch's own reader unpickles `.metadata` with
`pickle.load` and its planner unpickles non-tensor values with `weights_only=False`, so a crafted
step directory could run anything on `--resume`. Here the metadata goes through an unpickler that
admits only the classes DCP writes there, and non-tensor values load with `weights_only=True`.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import model_state
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)

# Every global the `.metadata` of a DCP checkpoint refers to (found by unpickling real ones), and no more.
METADATA_GLOBALS = frozenset({
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    *(("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)),
    ("torch.serialization", "_get_layout"),  # a torch.layout from its name, looked up in torch's own table
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
})


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only the objects in METADATA_GLOBALS: a pickle that names anything else is refused."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in METADATA_GLOBALS:
            raise LmforgeError(f"{self.path}: refused to unpickle {module}.{name}, which is not a class of "
                               "DCP metadata (this file was not written by torch)")
        return super().find_class(module, name)


class _SafeReader(dcp.FileSystemReader):
    """torch's FileSystemReader, reading `.metadata` through `_MetadataUnpickler` and refusing
    shards outside the checkpoint directory."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        with self.fs.create_stream(path, "rb") as file:
            metadata = _MetadataUnpickler(file, path).load()
        if not isinstance(metadata, Metadata):
            raise LmforgeError(f"{path}: holds a {type(metadata).__name__}, not the metadata of a DCP checkpoint")
        for info in (metadata.storage_data or {}).values():
            if Path(info.relative_path).name != info.relative_path:
                raise LmforgeError(f"{path}: names a shard outside its directory ({info.relative_path!r})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """torch's DefaultLoadPlanner, except that a non-tensor value (an optimizer's lr, betas) loads
    with weights_only=True: plain data, no code."""

    def __init__(self, directory: Path) -> None:
        super().__init__()  # flatten_state_dict=True: values go back through `mappings`
        self.directory = directory

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        key = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as error:
            file = self.directory / self.metadata.storage_data[read_item.storage_index].relative_path
            reason = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", str(error))
            raise LmforgeError(f"{file}: refused to unpickle {key} "
                               f"({reason.group(1) if reason else 'not plain data'})") from None
        set_element(self.original_state_dict, self.mappings[key], loaded)


def _read_metadata(directory: Path) -> Metadata:
    return _SafeReader(str(directory)).read_metadata()


def _load(state: dict, directory: Path, no_dist: bool) -> None:
    """`dcp.load` through the safe reader and planner. DCP wraps each rank's error in a
    CheckpointException (a BaseException); the error itself is raised instead."""
    try:
        dcp.load(state, storage_reader=_SafeReader(str(directory)), planner=_SafePlanner(directory), no_dist=no_dist)
    except CheckpointException as wrapped:
        causes = [cause for cause, _ in wrapped.failures.values()]
        raise next((cause for cause in causes if isinstance(cause, LmforgeError)), causes[0]) from wrapped


def check_sharded(directory: Path) -> None:
    """Read the metadata and every non-tensor value of the checkpoint in `directory`, in this
    process alone: a file refused by the safe readers raises here, before any model is built."""
    saved = _read_metadata(directory).state_dict_metadata
    _load({key: None for key, item in saved.items() if isinstance(item, BytesStorageMetadata)}, directory, no_dist=True)


def save_sharded(directory: Path, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
    """Write this rank's shards into `directory`; every rank must call it."""
    model_state_dict, optimizer_state_dict = get_state_dict(model, optimizer, options=OPTIONS)
    dcp.save({"model": model_state_dict, "optimizer": optimizer_state_dict}, checkpoint_id=str(directory))


def _check_shapes(directory: Path, state: dict) -> None:
    """Name the first tensor that the checkpoint lacks or holds in another shape, before DCP tries."""
    saved = _read_metadata(directory).state_dict_metadata
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
    _load(state, directory, no_dist=not dist.is_initialized())
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


def load_consolidated(directory: Path, config: ModelConfig, rebuild: Callable[[], Transformer] | None = None) -> Transformer:
    """The whole model from a sharded checkpoint, in this process alone (no collectives): how
    rank 0 exports the plain checkpoint directory. `rebuild` makes the run's module on the meta
    device when it holds more than `Transformer(config)` (a fine-tune's adapters)."""
    with torch.device("meta"):
        model = rebuild() if rebuild is not None else Transformer(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.init_buffers()
    state = {"model": model_state(model)}
    _check_shapes(directory, state)
    _load(state, directory, no_dist=True)
    return model
