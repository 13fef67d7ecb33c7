"""The process layout: one `DeviceMesh` with named dims `pp`, `dp_replicate`, `dp_shard`, `tp`.

torchrun (or Slurm with the same environment variables) starts one process a device; this module
joins them into a process group — NCCL on GPUs, gloo on CPUs — and arranges them on the mesh.
Data-parallel rank r of W reads its own share of every global batch; the tp and pp ranks of one
data-parallel replica read the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.runtime import resolve_device

DIMS = ("pp", "dp_replicate", "dp_shard", "tp")  # outermost first: pp talks least, tp most


class Layout(Protocol):
    """Degrees of parallelism and the pipeline's schedule (`lmforge.train.config.ParallelConfig`)."""

    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int
    pp_schedule: str
    pp_microbatches: int


def check_world_size(degrees: Layout, world_size: int) -> None:
    """Every degree is at least 1 and together they cover exactly the processes that are running."""
    for name in DIMS:
        if getattr(degrees, name) < 1:
            raise LmforgeError(f"--parallel.{name} must be ≥ 1, got {getattr(degrees, name)}")
    product = degrees.pp * degrees.dp_replicate * degrees.dp_shard * degrees.tp
    if product != world_size:
        raise LmforgeError(
            f"the parallel degrees multiply to {product} (dp_replicate {degrees.dp_replicate} × dp_shard "
            f"{degrees.dp_shard} × tp {degrees.tp} × pp {degrees.pp}), but {world_size} process(es) are running"
        )


def check_layout(layout: Layout, config: ModelConfig, context_length: int, micro_batch_size: int) -> None:
    """Whether this model splits the way the layout asks: heads and key/value groups by tp,
    layers and micro-batches by pp. Checked before the model is built."""
    if layout.pp_microbatches < 1:
        raise LmforgeError(f"--parallel.pp_microbatches must be ≥ 1, got {layout.pp_microbatches}")
    if layout.tp > 1:  # imported only when used: DTensor and pipelining are slow to import
        from lmforge.distributed.tensor_parallel import check_tensor_parallel

        check_tensor_parallel(config, layout.tp, context_length)
    if layout.pp > 1:
        from lmforge.distributed.pipeline import check_pipeline

        check_pipeline(config, layout.pp, layout.pp_schedule, layout.pp_microbatches, micro_batch_size)


@dataclass
class Topology:
    """Where this process sits: its device, its rank, and the mesh (None for a single process)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    mesh: DeviceMesh | None = None

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes metrics, plots and the exported checkpoint directory."""
        return self.rank == 0

    def degree(self, dim: str) -> int:
        return self.mesh.size(DIMS.index(dim)) if self.mesh is not None else 1

    def coordinate(self, dim: str) -> int:
        return self.mesh.get_local_rank(dim) if self.mesh is not None else 0

    def submesh(self, *dims: str) -> DeviceMesh:
        return self.mesh[dims if len(dims) > 1 else dims[0]]

    @property
    def dp_degree(self) -> int:
        return self.degree("dp_replicate") * self.degree("dp_shard")

    @property
    def dp_rank(self) -> int:
        """This process's data shard: replicas outermost, so each replica reads a contiguous block."""
        return self.coordinate("dp_replicate") * self.degree("dp_shard") + self.coordinate("dp_shard")

    def layout(self) -> dict[str, int]:
        return {dim: self.degree(dim) for dim in DIMS}

    def mean(self, value: float, present: bool = True) -> float:
        """The mean of `value` over the ranks where it is `present` (e.g. only the last pipeline
        stage has a loss); every rank gets the result."""
        if self.mesh is None:
            return value
        totals = torch.tensor([value if present else 0.0, float(present)], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        return (totals[0] / totals[1]).item()

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any (a stop signal may reach ranks at different steps)."""
        if self.mesh is None:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.mesh is not None:
            dist.barrier()

    def close(self) -> None:
        if self.mesh is not None and dist.is_initialized():
            dist.destroy_process_group()


def _device(preference: str, local_rank: int) -> torch.device:
    """One GPU a process (the one torchrun's LOCAL_RANK names), or the CPU."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    device = resolve_device("cuda" if preference == "auto" else preference)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise LmforgeError(
            f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible); start at most one process a GPU"
        )
    return torch.device("cuda", local_rank)


def init_topology(degrees: Layout, device: str = "auto") -> Topology:
    """Join the processes torchrun started (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) and
    build the mesh; one process gets a single-device topology with no process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    check_world_size(degrees, world_size)
    if world_size == 1:
        return Topology(device=resolve_device(device))
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise LmforgeError(f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; launch with torchrun or srun")
    resolved = _device(device, int(os.environ["LOCAL_RANK"]))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
        dist.init_process_group("nccl", device_id=resolved)
    else:
        dist.init_process_group("gloo")
    shape = tuple(getattr(degrees, dim) for dim in DIMS)
    mesh = init_device_mesh(resolved.type, shape, mesh_dim_names=DIMS)
    # A gradient norm over FSDP × TP shards is partial on both dims; with the two flattened into
    # one (as torchtitan does) DTensor reduces it in a single all-reduce instead of two in a row.
    mesh["dp_shard", "tp"]._flatten("dp_shard_tp")
    return Topology(device=resolved, rank=dist.get_rank(), world_size=world_size, mesh=mesh)
