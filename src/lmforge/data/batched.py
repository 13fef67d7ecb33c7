"""`batched`: a stream cut into lists of a fixed size, for the steps that work a batch at a time
(one numpy or tokenizer call over many documents instead of one each).

`itertools.batched` is Python 3.12 and yields tuples; lmforge runs on 3.11 and its batch
functions take lists.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive lists of `size` items in order, the last one shorter; never an empty one.
    Lazy: a batch is read only when the one before it has been consumed."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
