"""Fine-tuning batches: a stable train/validation split, packed or padded rows, exact resumption.

Rows are read in the order and with the state of `lmforge.data.loader.TokenWindows`: an epoch's
order depends only on (seed, epoch) (a seeded permutation, or the identity without shuffling),
rank r of W takes positions r, r+W, r+2W, ..., and the state is the epoch and how many rows all
ranks together have consumed, so a run resumes exactly, on any number of ranks.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from lmforge.data.examples.masks import TokenizedExample, fit_context
from lmforge.errors import LmforgeError

IGNORE = -100  # the target of a position the loss skips (torch's cross_entropy ignore_index)

Item = TypeVar("Item")


def split_by_hash(examples: Sequence[Item], val_fraction: float) -> tuple[list[Item], list[Item]]:
    """(train, val): an example goes to validation when a hash of its content (not its source or
    position) falls below `val_fraction`, so adding rows elsewhere moves no example across, and
    duplicates land on the same side."""
    if not 0 <= val_fraction < 1:
        raise LmforgeError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    threshold = int(val_fraction * 2**64)
    train: list[Item] = []
    val: list[Item] = []
    for example in examples:
        (val if _content_hash(example) < threshold else train).append(example)
    return train, val


def _content_hash(example: object) -> int:
    content = {key: value for key, value in dataclasses.asdict(example).items() if key != "source"}
    text = json.dumps(content, ensure_ascii=False, sort_keys=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class EpochOrder:
    """Which of `count` rows this rank reads next, epoch after epoch, with a state to resume from."""

    def __init__(self, count: int, *, shuffle: bool, seed: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        if count < world_size:
            raise LmforgeError(f"{count} row(s) of examples are too few for {world_size} rank(s); give more examples")
        self.count, self.shuffle, self.seed, self.rank, self.world_size = count, shuffle, seed, rank, world_size
        self.per_epoch = count // world_size * world_size  # positions used per epoch: every rank reads as many rows
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order = np.arange(count)

    def take(self, size: int) -> list[int]:
        """The next `size` row indices of this rank, starting the next epoch when this one is used up."""
        indices = []
        for _ in range(size):
            if self.position + self.world_size > self.per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            indices.append(int(self._epoch_order()[self.position + self.rank]))
            self.position += self.world_size
        return indices

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(self.count) if self.shuffle else np.arange(self.count)
            self._order_epoch = self.epoch
        return self._order

    def state_dict(self) -> dict[str, int]:
        """Plain ints; the row count guards against resuming on other data."""
        return {"epoch": self.epoch, "position": self.position, "rows": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(state, dict) or not all(type(state.get(key)) is int for key in ("epoch", "position", "rows")):
            raise LmforgeError(f"fine-tuning data state must hold integers epoch, position and rows, got {state!r}")
        if state["rows"] != self.count:
            raise LmforgeError(f"the saved data position is for {state['rows']:,} rows but these examples make "
                               f"{self.count:,}; resume with the same data, context length and packing")
        if state["epoch"] < 0 or not 0 <= state["position"] <= self.count:
            raise LmforgeError(f"fine-tuning data state {state!r} is out of range for {self.count:,} rows")
        self.epoch, self.position = state["epoch"], state["position"]


@dataclasses.dataclass(frozen=True)
class _Row:
    """One training row: its ids, whether each next id is a target, and the lengths of its examples."""

    ids: np.ndarray  # int32 [n]: half the memory of int64; batches are int64
    trained: np.ndarray  # bool [n - 1]: ids[i + 1] is a target of input i
    lengths: tuple[int, ...]

    @classmethod
    def of(cls, examples: Sequence[TokenizedExample]) -> _Row:
        ids = np.concatenate([np.asarray(example.ids, dtype=np.int32) for example in examples])
        supervised = np.concatenate([np.asarray(example.supervised, dtype=bool) for example in examples])
        lengths = tuple(len(example.ids) for example in examples)
        segments = np.repeat(np.arange(len(lengths)), lengths)
        return cls(ids, supervised[1:] & (segments[1:] == segments[:-1]), lengths)

    def targets(self) -> np.ndarray:
        return np.where(self.trained, self.ids[1:], IGNORE)

    def positions(self) -> np.ndarray:
        return np.concatenate([np.arange(length) for length in self.lengths])[:-1]

    def segments(self) -> np.ndarray:
        return np.repeat(np.arange(1, len(self.lengths) + 1), self.lengths)[:-1]


def _pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into rows of at most `capacity` tokens, best fit decreasing: longest
    first, each into the open row it leaves least room in. Rows come out close to full (next fit in
    the data's order leaves a quarter of them empty on Alpaca-like lengths); within a row the
    examples keep their order."""
    rows: list[list[int]] = []
    open_rows: dict[int, list[int]] = {}  # room left -> rows with that much
    rooms: list[int] = []  # open_rows' keys, ascending: at most `capacity` of them
    for index in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        length = lengths[index]
        at = bisect.bisect_left(rooms, length)
        if at < len(rooms):
            room = rooms[at]
            row = open_rows[room].pop()
            if not open_rows[room]:
                del open_rows[room], rooms[at]
        else:
            row, room = len(rows), capacity
            rows.append([])
        rows[row].append(index)
        room -= length
        if room > 0:
            if room not in open_rows:
                bisect.insort(rooms, room)
                open_rows[room] = []
            open_rows[room].append(row)
    return [sorted(row) for row in rows]


class _RowSource:
    """What both batch sources share: rows read in an `EpochOrder`, whose state resumes them."""

    _rows: list
    _order: EpochOrder

    def __len__(self) -> int:
        """Rows in all (an epoch is this many, divided among the ranks)."""
        return len(self._rows)

    def state_dict(self) -> dict[str, int]:
        return self._order.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where `state_dict()` was taken (on any world size)."""
        self._order.load_state_dict(state)


class ExampleBatches(_RowSource):
    """Batches of tokenized examples for the training loop, packed or padded.

    Examples longer than `context_length + 1` ids keep their first ones. With `pack`, examples are
    packed (best fit decreasing) into rows of at most `context_length + 1` ids, each with positions
    from 0 and a segment number (1, 2, ...; padding 0) so attention can stay inside an example;
    without it, each row is one example, padded to the batch's longest. A target is -100 unless it
    is supervised and in the same example as its input, so no loss crosses examples.
    """

    def __init__(
        self,
        examples: Sequence[TokenizedExample],
        *,
        context_length: int,
        pack: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ) -> None:
        if context_length < 1:
            raise LmforgeError(f"context length must be at least 1, got {context_length}")
        fitted = [fit_context(example, context_length) for example in examples]
        kept = [example for example, _ in fitted]
        groups = _pack([len(example.ids) for example in kept], context_length + 1) if pack else [[i] for i in range(len(kept))]
        self.context_length, self.pack, self.pad_id = context_length, pack, pad_id
        self.examples = len(kept)
        self.truncated = sum(cut for _, cut in fitted)
        self._rows = [_Row.of([kept[index] for index in group]) for group in groups]
        self.tokens = sum(len(row.ids) for row in self._rows)
        self.supervised_tokens = sum(int(row.trained.sum()) for row in self._rows)
        self._order = EpochOrder(len(self._rows), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        """This rank's next `size` rows: `inputs` and `targets` [size, T] int64, and with packing
        `positions` and `segments` of each input. T is the context length when packing, else the
        batch's longest row less one."""
        rows = [self._rows[index] for index in self._order.take(size)]
        width = self.context_length if self.pack else max(len(row.ids) for row in rows) - 1
        fields = {"inputs": self.pad_id, "targets": IGNORE} | ({"positions": 0, "segments": 0} if self.pack else {})
        batch = {name: np.full((size, width), fill, dtype=np.int64) for name, fill in fields.items()}
        for index, row in enumerate(rows):
            count = len(row.ids) - 1
            batch["inputs"][index, :count] = row.ids[:-1]
            batch["targets"][index, :count] = row.targets()
            if self.pack:
                batch["positions"][index, :count] = row.positions()
                batch["segments"][index, :count] = row.segments()
        return {name: torch.from_numpy(array) for name, array in batch.items()}


class LabeledBatches(_RowSource):
    """Batches of (ids, label index) for classification, read like `ExampleBatches` (same state and ranks)."""

    def __init__(
        self,
        rows: Sequence[tuple[Sequence[int], int]],
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ) -> None:
        if any(len(ids) == 0 for ids, _ in rows):
            raise ValueError("every classification row needs at least one token")
        self._rows = [(np.asarray(ids, dtype=np.int64), label) for ids, label in rows]
        self.pad_id = pad_id
        self._order = EpochOrder(len(self._rows), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        """`inputs` [size, T] right-padded with `pad_id` (T: the longest row), `last` [size] (where
        each row's last real token is: the one whose state classifies it) and `labels` [size]."""
        rows = [self._rows[index] for index in self._order.take(size)]
        inputs = np.full((size, max(len(ids) for ids, _ in rows)), self.pad_id, dtype=np.int64)
        for index, (ids, _) in enumerate(rows):
            inputs[index, :len(ids)] = ids
        return {
            "inputs": torch.from_numpy(inputs),
            "last": torch.tensor([len(ids) - 1 for ids, _ in rows], dtype=torch.long),
            "labels": torch.tensor([label for _, label in rows], dtype=torch.long),
        }
