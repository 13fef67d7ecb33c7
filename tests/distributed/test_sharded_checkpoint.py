"""Distributed checkpoints: resuming on the same layout is exact; a checkpoint moves between
layouts (two FSDP ranks → one process, one process → two FSDP ranks); rank 0 exports the
whole model as a plain checkpoint directory."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.distributed


def _rewound(run, tmp_path, name):
    """A copy of `run` that lost its last checkpoint (step 4), as after a crash."""
    copy = tmp_path / name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "train" / "step-000004")
    return copy


def test_resume_on_the_same_layout_is_exact(runs, fsdp_run, tmp_path):
    run = runs.torchrun(2, _rewound(fsdp_run, tmp_path, "same"), resume=True, train_micro_batch_size=2, parallel_dp_shard=2)
    assert runs.logged(run) == runs.logged(fsdp_run)


def test_saved_by_two_fsdp_ranks_resumes_on_one_process(runs, fsdp_run, tmp_path):
    run = runs.single(_rewound(fsdp_run, tmp_path, "one"), resume=True, train_micro_batch_size=4)
    assert "dp_shard 2 → 1" in runs.last_stderr
    runs.assert_same_trajectory(run, fsdp_run)


def test_saved_by_one_process_resumes_on_two_fsdp_ranks(runs, single_run, tmp_path):
    run = runs.torchrun(2, _rewound(single_run, tmp_path, "two"), resume=True, train_micro_batch_size=2, parallel_dp_shard=2)
    runs.assert_same_trajectory(run, single_run)


def test_rank_zero_exports_the_whole_model(fsdp_run, single_run):
    from lmforge.model.checkpoint_directory import load_checkpoint

    sharded, whole = load_checkpoint(fsdp_run).state_dict(), load_checkpoint(single_run).state_dict()
    assert sharded.keys() == whole.keys()
    for name, tensor in whole.items():
        assert (sharded[name] - tensor).abs().max() < 5e-5, name  # summation order (AVX2 vs AVX-512 kernels) after 4 AdamW steps
    assert (fsdp_run / "train" / "step-000004" / ".metadata").is_file()
    assert {path.name for path in (fsdp_run / "train").iterdir()} == {"step-000002", "step-000004"}
