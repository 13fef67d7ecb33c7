"""Which path ranks a query (NumPy, or compiled once it pays), and NumPy's lone-query shortcuts."""

from __future__ import annotations

import sys

import pytest

import lmforge.retrieval
from lmforge.retrieval import BM25Index, postings

QUERIES = ["the", "regular expression pattern", "iterator zzzunseen of the", "logging handler logging", ""]


@pytest.fixture
def loads(monkeypatch) -> list[int]:
    """Records each time the compiled ranking is asked for, and counts queries from 0."""
    calls: list[int] = []
    monkeypatch.setattr(postings, "_queries_ranked", 0)
    monkeypatch.setattr(postings, "_load_compiled_ranking", lambda: calls.append(postings._queries_ranked))
    return calls


def test_numpy_ranks_until_enough_queries_have_come(english_lines, loads, monkeypatch):
    """A lone command-line query never loads numba; a long run of queries does."""
    monkeypatch.setattr(postings, "COMPILED_AFTER", 10)
    index = BM25Index.build(english_lines, analyzer="simple")
    index.search("regular expression")
    index.search_many(QUERIES, k=3)
    assert loads == []
    index.search_many(QUERIES, k=3)
    assert loads == [11]


def test_numpy_ranks_when_numba_is_missing(english_lines, monkeypatch):
    expected = BM25Index.build(english_lines, analyzer="simple").search_many(QUERIES, k=4)
    monkeypatch.setattr(postings, "COMPILED_AFTER", 0)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "lmforge.retrieval.compiled_ranking", raising=False)
    monkeypatch.delattr(lmforge.retrieval, "compiled_ranking", raising=False)
    postings._load_compiled_ranking.cache_clear()
    try:
        assert postings._load_compiled_ranking() is None
        index = BM25Index.build(english_lines, analyzer="simple")
        assert index.search_many(QUERIES, k=4) == expected == [index.search(query, k=4) for query in QUERIES]
    finally:
        postings._load_compiled_ranking.cache_clear()


@pytest.mark.parametrize("sort_below", [0.0, 1.0])  # touched documents found by a scan, or by a sort
@pytest.mark.parametrize("variant", ["okapi", "bm25l"])
def test_a_lone_query_ranks_as_in_a_batch(english_lines, monkeypatch, sort_below, variant):
    monkeypatch.setattr(postings, "COMPILED_AFTER", sys.maxsize)
    monkeypatch.setattr(postings, "SORT_BELOW", sort_below)
    index = BM25Index.build(english_lines + english_lines[:50], analyzer="simple", variant=variant)
    for k in [1, 7, 100_000]:
        assert [index.search(query, k) for query in QUERIES] == index.search_many(QUERIES, k)


def test_row_bounds_are_each_rows_largest_weight(english_lines):
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25+")
    weight_rows = index.postings
    for term_id in [0, 5, len(index.vocabulary) - 1]:
        row = weight_rows.weights[weight_rows.indptr[term_id] : weight_rows.indptr[term_id + 1]]
        assert weight_rows.row_bounds[term_id] == row.max()
