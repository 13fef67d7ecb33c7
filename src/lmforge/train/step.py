"""One optimizer step's work on a laid-out model: each micro-batch's forward and backward, the
validation loss, and the clipped optimizer step, whatever the layout. `lmforge.distributed` only
lays the model out; how it is trained (loss scaling, when data-parallel gradients are averaged,
clipping over every shard and stage) is decided here.

Every loss, in training, in validation and on a pipeline's last stage, is `TrainStep.loss`: the
objective's sum over the micro-batch's items. So a pipelined run trains exactly what one process
does, and an objective is written once for every layout.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lmforge.distributed.mesh import Topology
from lmforge.distributed.parallelize import ParallelModel, parallelize
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.runtime import autocast
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.objectives import Batch, Objective

# --train.activation_checkpointing as the number of blocks between checkpointed ones
CHECKPOINT_EVERY = {"none": 0, "full": 1, "selective": 2}


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (a sharded norm, a tensor-parallel loss) reduced to the full value; others as they are."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if full_tensor is not None else tensor


def _item(loss: torch.Tensor) -> float:
    return _whole(loss).item()


def _stage_output(output: torch.Tensor, **_) -> torch.Tensor:
    """Stands in for the model on a pipeline's last stage, whose output is already the logits."""
    return output


class TrainStep:
    """The model laid out over `topology` (see `lmforge.distributed.parallelize`) and how to train
    it one micro-batch at a time. `layout.model` holds exactly the parameters this rank owns: the
    optimizer and checkpoints work on it."""

    def __init__(self, model: Transformer, topology: Topology, objective: Objective, train: TrainConfig,
                 parallel: ParallelConfig | None = None) -> None:
        parallel = parallel or ParallelConfig()
        if train.precision == "fp16" and topology.distributed:
            raise LmforgeError("--train.precision fp16 is single-process only (its loss scaler is not sharded); use bf16")
        self.topology, self.objective, self.precision = topology, objective, train.precision
        self.scaler = torch.amp.GradScaler("cuda") if train.precision == "fp16" else None
        self._pipeline_weight = 1.0  # what the last stage multiplies each loss by: set before every schedule run
        self.layout: ParallelModel = parallelize(
            model, topology, precision=train.precision, compile=train.compile,
            checkpoint_every=CHECKPOINT_EVERY[train.activation_checkpointing], pp_schedule=parallel.pp_schedule,
            pp_microbatches=parallel.pp_microbatches, pipeline_loss=self._pipeline_loss)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.topology.device, self.precision if self.layout.autocast else None)

    def loss(self, run, batch: Batch, balancing: bool) -> torch.Tensor:
        """The summed loss of a micro-batch; with `balancing`, a mixture of experts adds its
        load-balancing loss, weighted as every item's (training only: validation reports the
        objective alone)."""
        total = self.objective.loss(run, batch)
        if balancing and self.layout.model.config.n_experts:
            total = total + self.layout.model.moe_aux_loss() * self.objective.count(batch)
        return total

    def _pipeline_loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Pipelines refuse mixtures of experts (`check_pipeline`): there is no balancing loss to add.
        return self.loss(_stage_output, {"inputs": output, "targets": targets}, balancing=False) * self._pipeline_weight

    def _run_pipeline(self, batch: Batch, weight: float, train: bool) -> float:
        """The schedule splits `batch` into pipeline micro-batches; its last stage weights each one's
        summed loss by `weight`. Returns the batch's summed loss (NaN on the other stages)."""
        layout, losses = self.layout, []
        self._pipeline_weight = weight
        arguments = (batch["inputs"],) if layout.first_stage else ()
        run = layout.schedule.step if train else layout.schedule.eval
        run(*arguments, target=batch["targets"] if layout.last_stage else None, losses=losses)
        return sum(_item(loss) for loss in losses) / weight if losses else math.nan

    def train_micro_batch(self, batch: Batch, weight: float, last: bool) -> float:
        """Forward and backward on one micro-batch: its summed loss times `weight` (the data-parallel
        degree over the global batch's count, as DDP and FSDP average gradients over ranks) is
        added to the gradients; `last` says the step's last micro-batch, after which DDP averages
        them. Returns this rank's summed loss (NaN on pipeline stages without one)."""
        layout = self.layout
        batch = {key: value.to(self.topology.device, non_blocking=True) for key, value in batch.items()}
        with layout.loss_context():
            if layout.schedule is not None:
                with self._autocast():
                    return self._run_pipeline(batch, weight, train=True)
            defer_sync = not last and isinstance(layout.run, DistributedDataParallel)  # average once per optimizer step
            with layout.run.no_sync() if defer_sync else contextlib.nullcontext():
                with self._autocast():
                    total = self.loss(layout.run, batch, balancing=True)
                scaled = total * weight
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return _item(total)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        """The summed loss of one batch on this rank (NaN where a pipeline stage has none)."""
        layout = self.layout
        batch = {key: value.to(self.topology.device) for key, value in batch.items()}
        for part in layout.parts:
            part.eval()
        try:
            with layout.loss_context(), self._autocast():
                if layout.schedule is not None:
                    return self._run_pipeline(batch, 1.0, train=False)
                return _item(self.loss(layout.run, batch, balancing=False))
        finally:
            for part in layout.parts:
                part.train()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_norm: float) -> float:
        """Clip the global gradient norm (over every shard and stage) to `max_norm` (0: no
        clipping), step, and return the norm before clipping."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        parameters = [p for p in self.layout.model.parameters() if p.grad is not None]
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
