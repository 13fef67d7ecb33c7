"""Data parallelism: DDP (`dp_replicate`) or FSDP2 `fully_shard` (`dp_shard`, ZeRO-3); both at once
is HSDP — shard within a group, replicate across groups.

FSDP shards each block as its own unit, so at most one block's full weights (plus the root's
embedding and head) are gathered at a time; in bf16 the gathered copies and the activations are
bf16 while the sharded master weights stay fp32 and gradients are reduced in fp32.

A module that an objective calls on the model's output, after the model's forward has ended (a
classification head), says so with a true `runs_after_forward` attribute and is sharded as its own
unit: the root reshards its parameters when its forward ends, so the module gathers its own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(roots: list[nn.Module], blocks: list[nn.Module], mesh: DeviceMesh, precision: str, pipelined: bool) -> None:
    """`fully_shard` every block and every module run after the forward, then each root (a whole
    model or a pipeline stage) for what is left. With a 2-D mesh (dp_replicate, dp_shard) this is HSDP."""
    policy = mixed_precision(precision)
    for index, block in enumerate(blocks):
        # The last block is the first one backward needs, so keep it gathered; a pipeline runs
        # every block once per micro-batch, so regathering after each forward would repeat the work.
        reshard = not pipelined and index < len(blocks) - 1
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    for root in roots:
        for module in root.modules():
            if getattr(module, "runs_after_forward", False):  # it computes in fp32 itself: no cast
                fully_shard(module, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
        fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=not pipelined)


def apply_ddp(module: nn.Module, mesh: DeviceMesh, device: torch.device, unused_parameters: bool) -> DistributedDataParallel:
    """Replicate `module` over `mesh`; gradients are averaged in buckets as backward produces them.
    A mixture of experts may leave an expert without tokens, hence `unused_parameters`."""
    return DistributedDataParallel(
        module, process_group=mesh.get_group(), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused_parameters,
    )
