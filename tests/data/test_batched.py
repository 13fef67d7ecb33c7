"""`batched` cuts a stream the way the batch steps need: in order, lazily, never an empty batch."""

from __future__ import annotations

import itertools

import pytest

from lmforge.data.batched import batched


def test_batches_in_order_with_a_shorter_last_one():
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(batched([], 3)) == []


def test_reads_a_batch_only_when_it_is_asked_for():
    counter = itertools.count()
    batches = batched(counter, 2)
    assert next(batches) == [0, 1]
    assert next(counter) == 2


def test_a_batch_size_below_one_is_an_error():
    with pytest.raises(ValueError, match="at least 1"):
        next(batched(range(3), 0))
