"""Pipeline parallelism with `torch.distributed.pipelining`: the same `Transformer` cut by layers.

A stage is a `Transformer` shell that shares modules with the full model: the blocks of its layer
range (under their original names, so checkpoints look the same whatever the cut), the embedding
only on the first stage, the final norm and output head only on the last; the others are
identities. Every stage recomputes rotary cos/sin for itself. A schedule (GPipe, 1F1B, or
interleaved 1F1B with two stages a rank) splits each batch into micro-batches and streams them
through the stages.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.positions import RotaryPositions
from lmforge.model.transformer import Transformer

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved-1f1b": ScheduleInterleaved1F1B}


def stages_per_rank(schedule: str) -> int:
    """Interleaving gives each rank two stages, far apart in depth, to shrink the pipeline bubble."""
    return 2 if schedule == "interleaved-1f1b" else 1


def check_pipeline(config: ModelConfig, pp: int, schedule: str, microbatches: int, micro_batch_size: int) -> None:
    if pp == 1:
        return
    if schedule not in SCHEDULES:
        raise LmforgeError(f"--parallel.pp_schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    stages = pp * stages_per_rank(schedule)
    if config.n_layers < stages:
        raise LmforgeError(f"--parallel.pp {pp} with {schedule} needs {stages} stages but the model has {config.n_layers} layers")
    if config.tie_embeddings:
        raise LmforgeError("pipeline parallel needs untied embeddings: the first stage holds the embedding and the last "
                           "the output head; set tie_embeddings: false in the model config")
    if config.n_experts:
        raise LmforgeError("pipeline parallel does not carry the mixture-of-experts balancing loss between stages; "
                           "use --parallel.dp_shard for this model")
    if micro_batch_size % microbatches:
        raise LmforgeError(f"--train.micro_batch_size {micro_batch_size} must be a multiple of "
                           f"--parallel.pp_microbatches {microbatches}: each step splits it into pipeline micro-batches")
    if schedule != "gpipe" and microbatches < pp:
        raise LmforgeError(f"--parallel.pp_microbatches {microbatches} must be ≥ pp {pp} for {schedule}")
    if schedule == "interleaved-1f1b" and microbatches % pp:
        raise LmforgeError(f"--parallel.pp_microbatches {microbatches} must be a multiple of pp {pp} for interleaved-1f1b")


def stage_layers(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous layer ranges as equal as possible; earlier stages take the remainder."""
    base, extra = divmod(n_layers, n_stages)
    ranges, start = [], 0
    for stage in range(n_stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def rank_stages(pp_rank: int, pp: int, schedule: str) -> list[int]:
    """Stage ids this rank runs: its own, and with interleaving also one `pp` further down (a loop)."""
    return [pp_rank + pp * round_ for round_ in range(stages_per_rank(schedule))]


class _NoPositions(nn.Module):
    """Learned positions were added on the first stage; later stages pass the activations on."""

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return x, {}


class _ShardedSequencePositions(nn.Module):
    """Rotary cos/sin for a stage whose input is a sequence shard (tensor + sequence parallel): the
    model numbers the shard's T/tp rows, but attention gathers all T positions."""

    def __init__(self, rotary: RotaryPositions, tp: int) -> None:
        super().__init__()
        self.rotary, self.tp = rotary, tp

    def forward(self, x: torch.Tensor, positions: torch.Tensor):
        start = positions[:1]
        return self.rotary(x, start + torch.arange(positions.numel() * self.tp, device=positions.device))


def build_stage_module(model: Transformer, stage: int, n_stages: int, layers: range, tp: int) -> Transformer:
    """A `Transformer` running `layers` of `model`, sharing its modules (and so its parameters)."""
    first, last = stage == 0, stage == n_stages - 1
    with torch.device("meta"):
        shell = Transformer(model.config)
    shell.token_embedding = model.token_embedding if first else nn.Identity()
    if first:
        shell.positions = model.positions
    elif isinstance(model.positions, RotaryPositions):
        shell.positions = _ShardedSequencePositions(model.positions, tp) if tp > 1 else model.positions
    else:
        shell.positions = _NoPositions()
    shell.dropout = model.dropout if first else nn.Identity()
    shell.blocks = nn.ModuleList()
    for layer in layers:
        shell.blocks.add_module(str(layer), model.blocks[layer])
    shell.norm = model.norm if last else nn.Identity()
    shell.lm_head = model.lm_head if last else nn.Identity()
    return shell


def keep_only(model: Transformer, layers: set[int], first: bool, last: bool) -> None:
    """Drop from `model` what this rank's stages do not hold, so its parameters are this rank's
    share; block names keep their layer numbers (`blocks.5...`)."""
    for layer in range(len(model.blocks)):
        if layer not in layers:
            delattr(model.blocks, str(layer))  # not `del blocks[i]`, which renumbers the rest
    if not first:
        model.token_embedding = nn.Identity()
        if not isinstance(model.positions, RotaryPositions):
            model.positions = _NoPositions()
    if not last:
        model.norm, model.lm_head = nn.Identity(), nn.Identity()


def split_model(model: Transformer, pp_rank: int, pp: int, schedule: str, tp: int) -> tuple[list[int], list[Transformer]]:
    """This rank's stage ids and stage modules; `model` is trimmed in place to their union."""
    n_stages = pp * stages_per_rank(schedule)
    ranges = stage_layers(model.config.n_layers, n_stages)
    ids = rank_stages(pp_rank, pp, schedule)
    modules = [build_stage_module(model, stage, n_stages, ranges[stage], tp) for stage in ids]
    keep_only(model, {layer for stage in ids for layer in ranges[stage]}, first=0 in ids, last=n_stages - 1 in ids)
    return ids, modules


def build_schedule(modules: list[nn.Module], ids: list[int], n_stages: int, mesh: DeviceMesh, device: torch.device,
                   schedule: str, microbatches: int, loss_fn: Callable):
    """`PipelineStage`s over the pp process group and the schedule that drives them; shapes are
    inferred from the first micro-batch. `loss_fn` weights each micro-batch's loss itself, so the
    schedule leaves the gradients as they are (no division by the number of micro-batches)."""
    stages = [PipelineStage(module, stage, n_stages, device, group=mesh.get_group()) for module, stage in zip(modules, ids)]
    kind = SCHEDULES[schedule]
    if kind is ScheduleInterleaved1F1B:
        return kind(stages, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=False)
    return kind(stages[0], n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=False)
