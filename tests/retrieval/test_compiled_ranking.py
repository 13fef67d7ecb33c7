"""The compiled ranking gives NumPy's answers exactly: the same documents, in the same order, with
the same scores to the last bit, for every variant, lone queries and batches."""

from __future__ import annotations

import sys

import pytest

from lmforge.retrieval import BM25Index, postings

pytest.importorskip("numba")

QUERIES = [
    "the",
    "regular expression pattern",
    "logging handler logging handler",
    "convert command line strings to python objects",
    "iterator zzzunseen of the",
    "zzzunseen",
    "",
]
K_VALUES = [1, 3, 10, 100_000]  # the last beyond every query's matches


def ranked(index: BM25Index, queries: list[str], k: int, compiled: bool, monkeypatch) -> tuple[list, list]:
    """(search_many, search one by one) on the compiled path or on NumPy's."""
    monkeypatch.setattr(postings, "COMPILED_AFTER", 0 if compiled else sys.maxsize)
    return index.search_many(queries, k), [index.search(query, k) for query in queries]


@pytest.fixture(scope="module")
def queries(english_lines) -> list[str]:
    """The fixed queries and the opening words of real lines, whose frequent words touch many documents."""
    return QUERIES + [" ".join(line.split()[:4]) for line in english_lines[::9]]


@pytest.mark.parametrize("variant", ["okapi", "lucene", "bm25+", "bm25l"])
def test_compiled_equals_numpy(english_lines, queries, variant, monkeypatch):
    index = BM25Index.build(english_lines + english_lines[:50], analyzer="simple", variant=variant)  # ties
    for k in K_VALUES:
        numpy_batch, numpy_one_by_one = ranked(index, queries, k, False, monkeypatch)
        compiled_batch, compiled_one_by_one = ranked(index, queries, k, True, monkeypatch)
        assert compiled_batch == numpy_batch == numpy_one_by_one == compiled_one_by_one, (variant, k)
    assert compiled_batch[queries.index("")] == [] and compiled_batch[queries.index("zzzunseen")] == []


def test_exact_zero_sums_are_left_out_on_both_paths(monkeypatch):
    """With epsilon 0, a term in most documents weighs exactly 0: it matches nothing by itself."""
    texts = ["common rare", "common", "common word", "common other", "unrelated text"]
    index = BM25Index.build(texts, analyzer="whitespace", epsilon=0.0)
    for compiled in [False, True]:
        batch, one_by_one = ranked(index, ["common", "common rare", "text common"], 3, compiled, monkeypatch)
        assert batch == one_by_one
        assert [[document_id for document_id, _ in results] for results in batch] == [[], [0], [4]]


def test_negative_weights_rank_alike(monkeypatch):
    """Where most terms are in most documents, okapi's mean IDF, hence its floor, is negative: no
    row can then be skipped by its bound, and every document must still be visited."""
    texts = ["a b c", "a b c", "a b c", "a b d", "a e"]
    index = BM25Index.build(texts, analyzer="whitespace")
    assert (index.postings.weights < 0).any()
    queries = ["a", "a d", "c d e", "b c", "e"]
    for k in [1, 2, 10]:
        assert ranked(index, queries, k, True, monkeypatch) == ranked(index, queries, k, False, monkeypatch)


def test_compiled_on_a_memory_mapped_index(english_lines, queries, tmp_path, monkeypatch):
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25+")
    index.save(tmp_path / "idx")
    loaded = BM25Index.load(tmp_path / "idx", mmap=True)
    assert ranked(loaded, queries, 5, True, monkeypatch) == ranked(index, queries, 5, False, monkeypatch)


def test_a_batch_ranks_alike_on_any_number_of_threads(english_lines, queries, monkeypatch):
    """However many threads share a batch, in runs of any length, and however few arrays fit."""
    import numba

    from lmforge.retrieval import compiled_ranking

    index = BM25Index.build(english_lines + english_lines[:50], analyzer="simple", variant="bm25l")
    expected = ranked(index, queries, 5, False, monkeypatch)[0]
    monkeypatch.setattr(compiled_ranking, "MIN_RUN", 1)
    for n_threads in [1, 2, 5]:
        monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", n_threads)
        assert ranked(index, queries, 5, True, monkeypatch)[0] == expected
    monkeypatch.setattr(compiled_ranking, "DENSE_BYTES", 1)  # room for one array: one thread
    assert ranked(index, queries, 5, True, monkeypatch)[0] == expected
