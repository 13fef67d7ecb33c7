"""Tensor + sequence parallel over two processes: the same forward, backward and updates as one
process, with vocabulary-parallel loss; and the layouts it refuses."""

from __future__ import annotations

import pytest

from lmforge.distributed.tensor_parallel import check_tensor_parallel
from lmforge.errors import LmforgeError
from lmforge.model.presets import preset_config


@pytest.mark.distributed
def test_tp2_matches_one_process(runs, single_run, tmp_path):
    run = runs.torchrun(2, tmp_path / "tp", train_micro_batch_size=4, parallel_tp=2)
    runs.assert_same_trajectory(run, single_run)


@pytest.mark.distributed
def test_tp2_matches_one_process_for_gemma(runs, tmp_path):
    """QK-norms on each rank's heads, sandwich norms on sequence shards, the √d-scaled embedding
    split by vocabulary, local layers over the gathered sequence (window 8 < context 32)."""
    single = runs.single(tmp_path / "single", model="tiny-gemma", train_micro_batch_size=4)
    run = runs.torchrun(2, tmp_path / "tp", model="tiny-gemma", train_micro_batch_size=4, parallel_tp=2)
    runs.assert_same_trajectory(run, single)


@pytest.mark.parametrize("preset, tp, message", [
    ("tiny-llama", 4, "n_kv_heads (2)"),  # GQA: 2 key/value heads cannot be split 4 ways
    ("tiny-llama", 3, "n_heads (4)"),
    ("tiny-mla-moe", 2, "not multi-head latent attention"),
    ("gemma-3-270m", 2, "n_kv_heads (1)"),  # one key/value head: whole heads cannot be split
])
def test_layouts_tensor_parallel_cannot_split(preset, tp, message):
    with pytest.raises(LmforgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_tensor_parallel(preset_config(preset), tp, context_length=32)


def test_sequence_parallel_needs_whole_shards_of_the_context():
    with pytest.raises(LmforgeError, match="context length"):
        check_tensor_parallel(preset_config("tiny-llama"), 2, context_length=33)
