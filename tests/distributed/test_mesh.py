"""The mesh: its degrees must cover the processes; a 2-D layout (FSDP × TP over four processes)
composes and still trains like one process."""

from __future__ import annotations

import pytest

from lmforge.distributed.mesh import check_world_size
from lmforge.errors import LmforgeError
from lmforge.train.config import ParallelConfig


@pytest.mark.distributed
def test_fsdp_times_tp_on_four_processes_matches_one_process(runs, single_run, tmp_path):
    run = runs.torchrun(4, tmp_path / "fsdp-tp", train_micro_batch_size=2, parallel_dp_shard=2, parallel_tp=2)
    runs.assert_same_trajectory(run, single_run)


def test_degrees_must_multiply_to_the_world_size():
    check_world_size(ParallelConfig(dp_shard=2, tp=2), 4)
    with pytest.raises(LmforgeError, match=r"multiply to 4 \(dp_replicate 1 × dp_shard 2 × tp 2 × pp 1\), but 8"):
        check_world_size(ParallelConfig(dp_shard=2, tp=2), 8)
    with pytest.raises(LmforgeError, match="--parallel.tp must be ≥ 1"):
        check_world_size(ParallelConfig(tp=0), 1)
