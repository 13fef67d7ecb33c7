"""Apply the parallel layout to a model, in torchtitan's order: tensor/sequence parallel,
activation checkpointing, compile, then FSDP2 (or DDP); pipeline stages are cut after tensor
parallel and each stage is sharded as its own root.

`ParallelModel` is the result: this rank's parameters and what runs them (the model, its DDP
wrapper, or a pipeline schedule), whatever the layout, a single device included. Running a
training step on it is `lmforge.train.step`'s: this layer knows nothing of objectives, loss
scaling or optimizers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmforge.distributed.activation_checkpointing import apply_activation_checkpointing
from lmforge.distributed.mesh import Topology
from lmforge.model.transformer import Transformer

# DTensor, FSDP and pipelining are imported where a layout needs them: together they take seconds
# to import, and a single process uses none of them.


@dataclass
class ParallelModel:
    """This rank's part of the model and what runs it. `model` holds exactly the parameters this
    rank owns (all of them, or its pipeline stages'), under their usual names: the optimizer,
    clipping and checkpoints work on it. How it is trained is `lmforge.train.step`'s."""

    model: Transformer
    topology: Topology
    run: Callable | None = None  # the whole model's forward (compiled, or wrapped by DDP) when not pipelined
    parts: list[nn.Module] = field(default_factory=list)  # what runs: the model, its DDP wrapper, or pipeline stages
    schedule: object | None = None  # the pipeline schedule, whose last stage takes the caller's `pipeline_loss`
    first_stage: bool = True
    last_stage: bool = True
    autocast: bool = True  # False where FSDP's mixed-precision policy casts instead

    @property
    def whole(self) -> bool:
        """Every parameter is a plain, full tensor here (one process, or DDP): generation works."""
        return not self.topology.distributed or isinstance(self.run, DistributedDataParallel)

    def loss_context(self) -> contextlib.AbstractContextManager:
        """Vocabulary-sharded logits (tensor parallel) need `loss_parallel` for the loss and its backward."""
        if self.topology.degree("tp") == 1:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()


def _data_parallel_mesh(topology: Topology):
    return topology.submesh("dp_replicate", "dp_shard") if topology.degree("dp_replicate") > 1 else topology.submesh("dp_shard")


def parallelize(model: Transformer, topology: Topology, *, precision: str, compile: bool, checkpoint_every: int,
                pp_schedule: str = "1f1b", pp_microbatches: int = 1,
                pipeline_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> ParallelModel:
    """Lay `model` (built on the CPU, identically on every rank) out over `topology`. A pipeline's
    last stage computes `pipeline_loss(output, targets)` on each of its micro-batches."""
    if not topology.distributed:
        apply_activation_checkpointing(model, checkpoint_every)
        model.to(topology.device)
        return ParallelModel(model, topology, run=torch.compile(model) if compile else model, parts=[model])
    from lmforge.distributed.data_parallel import apply_ddp, apply_fsdp
    from lmforge.distributed.pipeline import (
        build_schedule,
        split_model,
        stages_per_rank,
    )
    from lmforge.distributed.tensor_parallel import apply_tensor_parallel

    tp, pp = topology.degree("tp"), topology.degree("pp")
    if tp > 1:
        apply_tensor_parallel(model, topology.submesh("tp"))
    apply_activation_checkpointing(model, checkpoint_every)
    if compile:
        for block in model.blocks:  # per block: each compiles once and the graphs stay small
            block.compile()
    roots: list[nn.Module] = [model]
    stage_ids, n_stages = [0], 1
    if pp > 1:
        stage_ids, roots = split_model(model, topology.coordinate("pp"), pp, pp_schedule, tp)
        n_stages = pp * stages_per_rank(pp_schedule)
    replicate_only = topology.degree("dp_replicate") == topology.world_size  # DDP: the model is whole on every rank
    if replicate_only:
        model.to(topology.device)
        roots = [apply_ddp(model, topology.submesh("dp_replicate"), topology.device, bool(model.config.n_experts))]
    else:
        # FSDP also where dp_shard is 1 (tensor or pipeline parallel without sharding): its policy
        # does the mixed precision, and every parameter is a DTensor on one mesh.
        apply_fsdp(roots, list(model.blocks), _data_parallel_mesh(topology), precision, pipelined=pp > 1)
    parallel = ParallelModel(model, topology, parts=roots, autocast=replicate_only)
    if pp == 1:
        parallel.run = roots[0]
        return parallel
    parallel.schedule = build_schedule(roots, stage_ids, n_stages, topology.submesh("pp"), topology.device, pp_schedule,
                                       pp_microbatches, pipeline_loss)
    parallel.first_stage, parallel.last_stage = 0 in stage_ids, n_stages - 1 in stage_ids
    return parallel
