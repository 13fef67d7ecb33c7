"""From the pretrain command to the loop: checks the data and the parallel layout first, and under
torchrun joins the processes before training and releases them after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lmforge.distributed.mesh import Topology, init_topology
from lmforge.errors import LmforgeError, ReportedByRankZero
from lmforge.model.config import ModelConfig
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.loop import RunResult, run_training


@contextlib.contextmanager
def joined_processes(parallel: ParallelConfig, device: str) -> Iterator[Topology]:
    """This process's place in the run (under torchrun, the process group joined) for the length
    of the block, released after. Every rank meets the same input error; rank 0 alone says it."""
    topology = init_topology(parallel, device)
    try:
        yield topology
    except LmforgeError as error:
        if not topology.is_main:
            raise ReportedByRankZero(str(error)) from None
        raise
    finally:
        topology.close()


def launch_training(model_config: ModelConfig, data: Path, out: Path, train: TrainConfig,
                    parallel: ParallelConfig, resume: bool, verify: str = "sample") -> RunResult | None:
    """The run's result on rank 0 (the only process that reports); None on the others."""
    if not (data / "manifest.json").is_file():
        raise LmforgeError(f"{data}: not a prepared-data directory (no manifest.json); run `lmforge prepare` first")
    with joined_processes(parallel, train.device) as topology:
        result = run_training(model_config, data, out, train, resume, parallel=parallel, topology=topology, verify=verify)
    return result if topology.is_main else None
