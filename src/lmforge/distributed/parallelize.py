"""Apply the parallel layout to a model, in torchtitan's order: tensor/sequence parallel,
activation checkpointing, compile, then FSDP2 (or DDP); pipeline stages are cut after tensor
parallel and each stage is sharded as its own root.

`ParallelModel` is what the training loop holds: one micro-batch forward and backward, a
validation loss, and the optimizer step with gradient clipping, whatever the layout — a single
device included, where it is the plain model under autocast.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmforge.distributed.activation_checkpointing import apply_activation_checkpointing
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.runtime import autocast

if TYPE_CHECKING:  # the objective is train/'s; this layer only calls it
    from lmforge.train.objectives import Batch, Objective

# DTensor, FSDP and pipelining are imported where a layout needs them: together they take seconds
# to import, and a single process uses none of them.


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded norm, a tensor-parallel loss) reduced to the full value; others as they are."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if full_tensor is not None else tensor


def _item(loss: torch.Tensor) -> float:
    return _whole(loss).item()


@dataclass
class ParallelModel:
    """This rank's part of the model and how to run it. `model` holds exactly the parameters this
    rank owns (all of them, or its pipeline stages'), under their usual names: the optimizer,
    clipping and checkpoints work on it."""

    model: Transformer
    topology: Topology
    objective: Objective
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> mean loss: pipeline stages
    precision: str
    grad_accum: int
    run: Callable | None = None  # the whole model's forward (compiled, or wrapped by DDP) when not pipelined
    parts: list[nn.Module] = field(default_factory=list)  # what runs: the model, its DDP wrapper, or pipeline stages
    schedule: object | None = None
    first_stage: bool = True
    last_stage: bool = True
    autocast: bool = True  # False where FSDP's mixed-precision policy casts instead
    scaler: torch.amp.GradScaler | None = None

    @property
    def whole(self) -> bool:
        """Every parameter is a plain, full tensor here (one process, or DDP): generation works."""
        return not self.topology.distributed or isinstance(self.run, DistributedDataParallel)

    def _autocast(self):
        return autocast(self.topology.device, self.precision if self.autocast else None)

    def _loss_context(self):
        """Vocabulary-sharded logits (tensor parallel) need `loss_parallel` for the loss and its backward."""
        if self.topology.degree("tp") == 1:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    def _loss(self, batch: Batch) -> torch.Tensor:
        total = self.objective.loss(self.run, batch)
        if self.model.config.n_experts:  # the load-balancing loss, weighted as every item's
            total = total + self.model.moe_aux_loss() * self.objective.count(batch)
        return total

    def _pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, targets) / self.grad_accum

    def _run_pipeline(self, inputs: torch.Tensor, targets: torch.Tensor, train: bool) -> float:
        losses: list[torch.Tensor] = []
        arguments = (inputs,) if self.first_stage else ()
        run = self.schedule.step if train else self.schedule.eval
        run(*arguments, target=targets if self.last_stage else None, losses=losses)
        return sum(_item(loss) for loss in losses) / len(losses) * self.grad_accum if losses else math.nan

    def train_micro_batch(self, batch: Batch, weight: float, last: bool) -> float:
        """Forward and backward on one micro-batch: its summed loss times `weight` (the data-parallel
        degree over the global batch's count, as DDP and FSDP average gradients over ranks) is
        added to the gradients. Returns this rank's summed loss (NaN on pipeline stages without one).
        Pipeline schedules scale by 1/grad_accum themselves: they run pretraining, whose
        micro-batches all count the same."""
        batch = {key: value.to(self.topology.device, non_blocking=True) for key, value in batch.items()}
        with self._loss_context():
            if self.schedule is not None:
                with self._autocast():
                    return self._run_pipeline(batch["inputs"], batch["targets"], train=True) * batch["targets"].numel()
            defer_sync = not last and isinstance(self.run, DistributedDataParallel)  # average once per optimizer step
            with self.run.no_sync() if defer_sync else contextlib.nullcontext():
                with self._autocast():
                    total = self._loss(batch)
                scaled = total * weight
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return _item(total)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        """The summed loss of one batch on this rank (NaN where a pipeline stage has none)."""
        batch = {key: value.to(self.topology.device) for key, value in batch.items()}
        for part in self.parts:
            part.eval()
        try:
            with self._loss_context(), self._autocast():
                if self.schedule is not None:
                    return self._run_pipeline(batch["inputs"], batch["targets"], train=False) * batch["targets"].numel()
                return _item(self.objective.loss(self.run, batch))
        finally:
            for part in self.parts:
                part.train()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        """Clip the global gradient norm (over every shard and stage) to `max_norm` (0: no
        clipping), step, and return the norm before clipping."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        norm = _whole(torch.nn.utils.get_total_norm([p.grad for p in parameters]))  # over every shard
        if self.topology.degree("pp") > 1:  # each stage has its own parameters: add squared norms
            squared = norm.double() ** 2
            dist.all_reduce(squared, group=self.topology.submesh("pp").get_group())
            norm = squared.sqrt().to(norm.dtype)
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm or float("inf"), norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm.item()


def _data_parallel_mesh(topology: Topology):
    return topology.submesh("dp_replicate", "dp_shard") if topology.degree("dp_replicate") > 1 else topology.submesh("dp_shard")


def parallelize(model: Transformer, topology: Topology, *, objective: Objective, loss_fn: Callable, precision: str, compile: bool,
                checkpoint_every: int, pp_schedule: str = "1f1b", pp_microbatches: int = 1, grad_accum: int = 1) -> ParallelModel:
    """Lay `model` (built on the CPU, identically on every rank) out over `topology`."""
    if not topology.distributed:
        apply_activation_checkpointing(model, checkpoint_every)
        model.to(topology.device)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return ParallelModel(model, topology, objective, loss_fn, precision, grad_accum, run=torch.compile(model) if compile else model,
                             parts=[model], scaler=scaler)
    if precision == "fp16":
        raise LmforgeError("--train.precision fp16 is single-process only (its loss scaler is not sharded); use bf16")
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
    parallel = ParallelModel(model, topology, objective, loss_fn, precision, grad_accum, parts=roots, autocast=replicate_only)
    if pp == 1:
        parallel.run = roots[0]
        return parallel
    parallel.schedule = build_schedule(roots, stage_ids, n_stages, topology.submesh("pp"), topology.device, pp_schedule,
                                       pp_microbatches, parallel._pipeline_loss)
    parallel.first_stage, parallel.last_stage = 0 in stage_ids, n_stages - 1 in stage_ids
    return parallel
