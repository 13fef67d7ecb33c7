"""From the pretrain command to the loop: checks the data and the parallel layout first."""

from __future__ import annotations

import os
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.loop import RunResult, run_training


def launch_training(model_config: ModelConfig, data: Path, out: Path, train: TrainConfig,
                    parallel: ParallelConfig, resume: bool) -> RunResult | None:
    if not (data / "manifest.json").is_file():
        raise LmforgeError(f"{data}: not a prepared-data directory (no manifest.json); run `lmforge prepare` first")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel.world_size != world_size:
        raise LmforgeError(
            f"the parallel degrees multiply to {parallel.world_size} (dp_replicate {parallel.dp_replicate} × dp_shard "
            f"{parallel.dp_shard} × tp {parallel.tp} × pp {parallel.pp}), but {world_size} process(es) are running"
        )
    if world_size > 1:
        raise LmforgeError("distributed training is not available in this version; run one process")
    return run_training(model_config, data, out, train, resume)
