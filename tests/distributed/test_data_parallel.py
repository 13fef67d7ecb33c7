"""DDP and FSDP2 over two processes follow the single process's loss trajectory on the same
global batch, however it is split into ranks and accumulation steps."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.distributed


def test_ddp_with_accumulation_matches_one_process(runs, single_run, tmp_path):
    # 2 ranks × 2 accumulation steps × 1 sequence = the single process's micro-batch of 4
    run = runs.torchrun(2, tmp_path / "ddp", train_micro_batch_size=1, train_grad_accum=2, parallel_dp_replicate=2)
    runs.assert_same_trajectory(run, single_run)


def test_fsdp_matches_one_process(runs, single_run, fsdp_run):
    runs.assert_same_trajectory(fsdp_run, single_run)


def test_fsdp_bf16_policy_trains_close_to_fp32(runs, single_run, tmp_path):
    run = runs.torchrun(2, tmp_path / "bf16", train_micro_batch_size=2, train_precision="bf16", train_steps=2,
                        parallel_dp_shard=2)
    bf16, fp32 = runs.logged(run), runs.logged(single_run)
    for step, (loss, norm) in bf16.items():
        assert math.isfinite(norm) and loss == pytest.approx(fp32[step][0], rel=1e-2)
