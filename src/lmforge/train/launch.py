"""From the pretrain command to the loop: checks the data and the parallel layout first, and under
torchrun joins the processes before training and releases them after."""

from __future__ import annotations

from pathlib import Path

from lmforge.distributed.mesh import init_topology
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.loop import RunResult, run_training


def launch_training(model_config: ModelConfig, data: Path, out: Path, train: TrainConfig,
                    parallel: ParallelConfig, resume: bool, verify: str = "sample") -> RunResult | None:
    """The run's result on rank 0 (the only process that reports); None on the others."""
    if not (data / "manifest.json").is_file():
        raise LmforgeError(f"{data}: not a prepared-data directory (no manifest.json); run `lmforge prepare` first")
    topology = init_topology(parallel, train.device)
    try:
        result = run_training(model_config, data, out, train, resume, parallel=parallel, topology=topology, verify=verify)
    except LmforgeError:
        if not topology.is_main:  # every rank meets the same error; rank 0 alone says it
            raise SystemExit(1) from None
        raise
    finally:
        topology.close()
    return result if topology.is_main else None
