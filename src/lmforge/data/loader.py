"""`TokenWindows`: training examples cut from the token shards, resumable and data-parallel aware.

The split's shards are read as one long memory-mapped sequence and cut into non-overlapping
windows of `context_length + 1` tokens at stride `context_length` (a window's first T tokens are
the input, its last T the targets). An epoch visits the windows in an order that depends only on
(seed, epoch): a seeded permutation, or the identity when `shuffle=False`. Rank r of W takes
positions r, r+W, r+2W, ... of that order, so the windows forming one global batch are the same
whatever the world size, and a run can resume on a different number of GPUs.

The state is two integers: the epoch and `position`, how many windows of the epoch's order all
ranks together have consumed. Every rank holds the same state, so rank 0's copy is enough to save.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmforge.data.shards import DTYPES, read_manifest
from lmforge.data.verify import shard_files, vocabulary_error
from lmforge.errors import LmforgeError


class TokenWindows(IterableDataset):
    """(input, target) windows over one split of a prepared-data directory.

    `next_batch(B)` is the trainer's fast path and the one whose state resumes exactly. Iterating
    (e.g. under a DataLoader) yields single pairs for the rest of the current epoch; with DataLoader
    workers each worker yields a disjoint share, and only in-process iteration advances the state.

    The shards are checked against the manifest first (`verify`: see `lmforge.data.verify`), and
    every window read is checked to hold ids below `vocab_size` (the model's; default the
    manifest's), so damage a sampled check missed is an error naming the shard, not an IndexError.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        context_length: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        verify: str = "sample",
        vocab_size: int | None = None,
    ) -> None:
        if context_length < 1:
            raise LmforgeError(f"context length must be at least 1, got {context_length}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.context_length = context_length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        manifest = read_manifest(self.data_dir)
        self.vocab_size: int = manifest["vocab_size"]
        self.eos_id: int = manifest["eos_id"]
        self._dtype = DTYPES[manifest["dtype"]]
        self._model_vocab = vocab_size is not None
        self._id_limit = self.vocab_size if vocab_size is None else vocab_size
        shards = shard_files(self.data_dir, manifest, split, verify=verify, vocab_size=vocab_size)
        shards = [(path, tokens) for path, tokens in shards if tokens > 0]
        self._paths = [path for path, _ in shards]
        self._shard_starts = np.cumsum([0] + [tokens for _, tokens in shards])  # token offset of each shard, then the total
        self.tokens = int(self._shard_starts[-1])
        # Window i spans tokens [i*T, i*T + T + 1): the last one must end inside the data.
        self.total_windows = max(self.tokens - 1, 0) // context_length
        self.windows_per_epoch = self.total_windows // world_size
        if self.windows_per_epoch == 0:
            needed = world_size * context_length + 1
            raise LmforgeError(
                f"{self.data_dir} split {split!r} has {self.tokens:,} tokens, too few for {world_size} rank(s) x one window of "
                f"{context_length:,}+1 tokens (needs {needed:,}); use a shorter context length or prepare more data"
            )
        self.epoch = 0
        self.position = 0
        self._arrays: list[np.memmap] | None = None
        self._arrays_pid: int | None = None
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Windows this rank reads per epoch."""
        return self.windows_per_epoch

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: plain ints, JSON-serialisable; the window count guards against resuming on other data."""
        return {"epoch": self.epoch, "position": self.position, "windows": self.total_windows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where `state_dict()` was taken (on any world size)."""
        if not isinstance(state, dict) or not all(type(state.get(key)) is int for key in ("epoch", "position", "windows")):
            raise LmforgeError(f"data loader state must hold integers epoch, position and windows, got {state!r}")
        if state["windows"] != self.total_windows:
            raise LmforgeError(
                f"the saved data position is for {state['windows']:,} windows but {self.data_dir} split {self.split!r} has "
                f"{self.total_windows:,} at context length {self.context_length}; resume with the same data and context length"
            )
        if state["epoch"] < 0 or not 0 <= state["position"] <= self.total_windows:
            raise LmforgeError(f"data loader state {state!r} is out of range for {self.total_windows:,} windows")
        self.epoch, self.position = state["epoch"], state["position"]

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next `batch_size` windows as (inputs, targets), int64 [batch_size, context_length]."""
        inputs = np.empty((batch_size, self.context_length), dtype=np.int64)
        targets = np.empty((batch_size, self.context_length), dtype=np.int64)
        for row in range(batch_size):
            self._start_next_epoch_if_done()
            window = self._window(int(self._epoch_order()[self.position + self.rank]))
            inputs[row], targets[row] = window[:-1], window[1:]
            self.position += self.world_size
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        self._start_next_epoch_if_done()
        order = self._epoch_order()
        last = self.windows_per_epoch * self.world_size - self.world_size  # the last position this epoch
        for step, position in enumerate(range(self.position, last + 1, self.world_size)):
            if step % workers != worker_id:
                continue
            if worker is None:
                self.position = position + self.world_size
            window = torch.from_numpy(self._window(int(order[position + self.rank])))
            yield window[:-1], window[1:]

    def _start_next_epoch_if_done(self) -> None:
        if self.position + self.world_size > self.windows_per_epoch * self.world_size:
            self.epoch += 1
            self.position = 0

    def _epoch_order(self) -> np.ndarray:
        """Window indices in this epoch's visiting order (cached for the current epoch)."""
        if self._order_epoch != self.epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.total_windows)
            else:
                self._order = np.arange(self.total_windows)
            self._order_epoch = self.epoch
        return self._order

    def _window(self, index: int) -> np.ndarray:
        """Tokens [index*T, index*T + T + 1) of the split as int64, joined across a shard boundary if needed."""
        arrays = self._shard_arrays()
        start = index * self.context_length
        end = start + self.context_length + 1
        shard = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        pieces = []
        while start < end:
            offset = int(self._shard_starts[shard])
            stop = min(end, int(self._shard_starts[shard + 1]))
            piece = arrays[shard][start - offset:stop - offset]
            if int(piece.max()) >= self._id_limit:  # a few microseconds a window: nothing next to a training step
                first = int(np.argmax(piece >= self._id_limit))
                raise vocabulary_error(self._paths[shard], int(piece[first]), self._id_limit, model=self._model_vocab,
                                       position=start - offset + first)
            pieces.append(piece)
            start = stop
            shard += 1
        return np.concatenate(pieces, dtype=np.int64)

    def _shard_arrays(self) -> list[np.memmap]:
        """Memory maps opened lazily in each process: a DataLoader worker (forked or spawned) opens its own."""
        if self._arrays is None or self._arrays_pid != os.getpid():
            self._arrays = [np.memmap(path, dtype=self._dtype, mode="r") for path in self._paths]
            self._arrays_pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_arrays=None, _arrays_pid=None)  # never pickle open maps (file handles) into workers
        state.update(_order=None, _order_epoch=None)  # cheap to recompute, costly to copy
        return state
