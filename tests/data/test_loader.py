"""TokenWindows: exact tiling, epoch order, data-parallel ranks, exact resumption, DataLoader workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmforge.data.loader import TokenWindows
from lmforge.data.shards import ShardWriter, build_manifest, write_manifest
from lmforge.errors import LmforgeError

CONTEXT = 16
EOS = 0


def make_data(directory, *, dtype="uint16", vocab_size=60_000, documents=40, shard_tokens=97, seed=0) -> np.ndarray:
    """Random documents in small shards (so windows cross shard boundaries); returns the flat token stream."""
    generator = np.random.default_rng(seed)
    flat = []
    with ShardWriter(directory, "train", dtype, eos_id=EOS, shard_tokens=shard_tokens) as writer:
        for _ in range(documents):
            document = generator.integers(1, vocab_size, size=int(generator.integers(5, 60)))
            writer.add_document(document)
            flat += [*document.tolist(), EOS]
    write_manifest(directory, build_manifest(dtype=dtype, vocab_size=vocab_size, eos_id=EOS, splits={"train": writer.close()}))
    return np.array(flat, dtype=np.int64)


@pytest.fixture
def data(tmp_path) -> tuple:
    return tmp_path, make_data(tmp_path)


def window_index(flat: np.ndarray, inputs: torch.Tensor) -> int:
    """Which window a row is, checked to be an exact window of the stream."""
    first = inputs[0].item()
    for start in np.flatnonzero(flat[::CONTEXT] == first) * CONTEXT:
        if np.array_equal(flat[start:start + CONTEXT], inputs.numpy()):
            return int(start // CONTEXT)
    raise AssertionError("row is not a window of the data")


def take(windows: TokenWindows, count: int, batch_size: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    pairs = []
    while len(pairs) < count:
        inputs, targets = windows.next_batch(batch_size)
        pairs += list(zip(inputs, targets))
    return pairs[:count]


@pytest.mark.parametrize(("dtype", "vocab_size"), [("uint16", 60_000), ("uint32", 200_000)])
def test_sequential_windows_tile_the_data(tmp_path, dtype, vocab_size):
    flat = make_data(tmp_path, dtype=dtype, vocab_size=vocab_size)
    windows = TokenWindows(tmp_path, context_length=CONTEXT, shuffle=False)
    assert windows.tokens == len(flat) and len(windows) == windows.total_windows == (len(flat) - 1) // CONTEXT
    inputs, targets = windows.next_batch(len(windows))
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == (len(windows), CONTEXT)
    covered = len(windows) * CONTEXT
    assert np.array_equal(inputs.reshape(-1).numpy(), flat[:covered])
    assert np.array_equal(targets.reshape(-1).numpy(), flat[1:covered + 1])
    assert windows.vocab_size == vocab_size and windows.eos_id == EOS


def test_shuffled_epochs_cover_every_window_once(data):
    directory, flat = data
    windows = TokenWindows(directory, context_length=CONTEXT, seed=3)
    count = len(windows)
    epochs = [[window_index(flat, inputs) for inputs, _ in take(windows, count)] for _ in range(2)]
    assert all(sorted(order) == list(range(count)) for order in epochs)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(count))
    again = TokenWindows(directory, context_length=CONTEXT, seed=3)
    assert [window_index(flat, inputs) for inputs, _ in take(again, count)] == epochs[0]
    other_seed = TokenWindows(directory, context_length=CONTEXT, seed=4)
    assert [window_index(flat, inputs) for inputs, _ in take(other_seed, count)] != epochs[0]


def test_ranks_read_disjoint_windows_of_the_same_global_order(data):
    directory, flat = data
    single = TokenWindows(directory, context_length=CONTEXT, seed=1)
    ranks = [TokenWindows(directory, context_length=CONTEXT, seed=1, rank=rank, world_size=2) for rank in range(2)]
    per_rank = len(ranks[0])
    assert per_rank == single.total_windows // 2
    global_order = [window_index(flat, inputs) for inputs, _ in take(single, 2 * per_rank)]
    rank_orders = [[window_index(flat, inputs) for inputs, _ in take(windows, per_rank, batch_size=3)] for windows in ranks]
    assert not set(rank_orders[0]) & set(rank_orders[1])
    assert [index for pair in zip(*rank_orders) for index in pair] == global_order


def test_global_batch_does_not_depend_on_world_size(data):
    directory, _ = data
    single = TokenWindows(directory, context_length=CONTEXT, seed=5)
    ranks = [TokenWindows(directory, context_length=CONTEXT, seed=5, rank=rank, world_size=4) for rank in range(4)]
    for _ in range(3):
        global_batch = {tuple(row.tolist()) for row in single.next_batch(8)[0]}
        assert {tuple(row.tolist()) for windows in ranks for row in windows.next_batch(2)[0]} == global_batch


def test_resume_is_exact_across_epochs_and_world_sizes(data):
    directory, _ = data
    original = TokenWindows(directory, context_length=CONTEXT, seed=7)
    original.next_batch(5)
    original.next_batch(5)
    state = json.loads(json.dumps(original.state_dict()))
    assert state == {"epoch": 0, "position": 10, "windows": original.total_windows}
    expected = [original.next_batch(4) for _ in range(len(original))]  # runs into the following epochs
    resumed = TokenWindows(directory, context_length=CONTEXT, seed=7)
    resumed.load_state_dict(state)
    for inputs, targets in expected:
        got_inputs, got_targets = resumed.next_batch(4)
        assert torch.equal(got_inputs, inputs) and torch.equal(got_targets, targets)
    assert resumed.state_dict() == original.state_dict() and original.epoch >= 1

    halves = [TokenWindows(directory, context_length=CONTEXT, seed=7, rank=rank, world_size=2) for rank in range(2)]
    for windows in halves:
        windows.load_state_dict(state)
    replay = TokenWindows(directory, context_length=CONTEXT, seed=7)
    replay.load_state_dict(state)
    for _ in range(3):
        reference = replay.next_batch(4)[0]
        assert torch.equal(torch.stack([row for pair in zip(*(w.next_batch(2)[0] for w in halves)) for row in pair]), reference)


def test_iteration_yields_the_rest_of_the_epoch_and_advances_state(data):
    directory, flat = data
    windows = TokenWindows(directory, context_length=CONTEXT, shuffle=False)
    windows.next_batch(3)
    pairs = list(windows)
    assert [window_index(flat, inputs) for inputs, _ in pairs] == list(range(3, len(windows)))
    assert all(torch.equal(inputs[1:], targets[:-1]) for inputs, targets in pairs)
    assert windows.state_dict()["position"] == len(windows)
    assert len(list(windows)) == len(windows)  # the next epoch, whole
    assert windows.epoch == 1


def test_dataloader_workers_share_an_epoch_without_duplicates(data):
    directory, flat = data
    windows = TokenWindows(directory, context_length=CONTEXT, seed=2, rank=1, world_size=2)
    windows.next_batch(1)  # memmaps open in this process must not travel to the workers
    loader = DataLoader(windows, batch_size=4, num_workers=2)
    seen = [window_index(flat, inputs) for batch_inputs, _ in loader for inputs in batch_inputs]
    assert len(seen) == len(set(seen)) == len(windows) - 1
    in_process = TokenWindows(directory, context_length=CONTEXT, seed=2, rank=1, world_size=2)
    in_process.next_batch(1)
    assert sorted(seen) == sorted(window_index(flat, inputs) for inputs, _ in in_process)


def test_pickles_without_open_maps(data):
    directory, _ = data
    windows = TokenWindows(directory, context_length=CONTEXT)
    first = windows.next_batch(2)
    copy = pickle.loads(pickle.dumps(windows))
    assert copy._arrays is None
    assert torch.equal(copy.next_batch(2)[0], windows.next_batch(2)[0]) and not torch.equal(first[0], windows.next_batch(2)[0])


def test_context_too_long_names_directory_and_numbers(data):
    directory, flat = data
    with pytest.raises(LmforgeError, match=rf"{directory} split 'train' has {len(flat):,} tokens, too few .* window of 4,096\+1 tokens"):
        TokenWindows(directory, context_length=4096)


def test_unknown_split_and_foreign_state_are_user_errors(data):
    directory, _ = data
    with pytest.raises(LmforgeError, match="has no 'val' split \\(it has: train\\)"):
        TokenWindows(directory, "val", context_length=CONTEXT)
    windows = TokenWindows(directory, context_length=CONTEXT)
    with pytest.raises(LmforgeError, match="resume with the same data and context length"):
        windows.load_state_dict({"epoch": 0, "position": 0, "windows": windows.total_windows + 1})
    with pytest.raises(LmforgeError, match="must hold integers epoch, position and windows"):
        windows.load_state_dict({"epoch": 0})


def test_bad_manifest_is_reported(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(LmforgeError, match="not an lmforge shard manifest"):
        TokenWindows(tmp_path, context_length=CONTEXT)


def test_ids_beyond_the_models_vocabulary_are_refused_at_start(data):
    directory, _ = data
    first_shard_max = int(np.fromfile(directory / "train-00000.bin", dtype="<u2").max())
    with pytest.raises(LmforgeError, match=rf"train-00000.bin holds token id {first_shard_max} but the model's vocab_size is 1000"):
        TokenWindows(directory, context_length=CONTEXT, vocab_size=1000)


def test_every_window_is_checked_for_ids_a_sampled_check_missed(data):
    """Damage the start-up check did not read (here: --verify off) is an error naming the shard and position."""
    directory, _ = data
    shard = directory / "train-00002.bin"
    tokens = np.fromfile(shard, dtype="<u2")
    tokens[3] = 65_000  # above the vocabulary of 60,000
    tokens.tofile(shard)
    windows = TokenWindows(directory, context_length=CONTEXT, verify="off")
    with pytest.raises(LmforgeError, match=r"train-00002.bin holds token id 65000 at token 3 but manifest.json's vocab_size is 60000"):
        take(windows, len(windows))
