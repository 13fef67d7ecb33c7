"""The ranking of `postings.py` compiled with numba: the same sums in the same order, so the same
scores to the last bit, with neither NumPy's temporary arrays nor its per-call overhead.

A query's rows of W are added into a dense array of scores, one entry a document. Then its rows
are walked again, those that can add the most first: a document's first visit takes its total and
resets it to 0, so later visits pass it by, and a heap keeps the k best (score, document) pairs.
Once the heap's worst beats what the remaining rows could add up to, those rows are only reset
(MaxScore's bound, Turtle & Flood 1995): a frequent word's long row is summed but rarely ranked.
A query thus costs at most twice its postings, never the whole corpus. A batch's queries are
shared among threads, each with a dense array of its own.

Importing this module imports numba, about half a second; the first ranking then loads the
compiled kernels from numba's cache on disk (the first time ever, it compiles them: some seconds
once, about 20 on a busy two-core machine). `postings.py` imports it only once enough queries
have come to pay for that.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import queue
from collections.abc import Iterator

import numba
import numpy as np

from lmforge.retrieval.queries import Queries, Ranked

# A batch's dense arrays (8 bytes a document, one a thread) stay under this: fewer threads rank
# a batch over a corpus too large for one array each.
DENSE_BYTES = 1 << 28
# A batch is cut into about this many runs of queries a thread (so that the threads' loads even
# out), of at least MIN_RUN queries (so that handing a run out costs little beside ranking it).
RUNS_A_THREAD = 8
MIN_RUN = 16


@numba.njit(nogil=True, cache=True)
def _better(score, document, other_score, other_document):
    """The ranking order: higher score first, ties by document order."""
    return score > other_score or (score == other_score and document < other_document)


@numba.njit(nogil=True, cache=True)
def _sift_down(scores, documents, position, size):
    """Moves the entry at `position` down the heap until both its children rank above it."""
    score, document = scores[position], documents[position]
    while 2 * position + 1 < size:
        child = 2 * position + 1
        if child + 1 < size and _better(scores[child], documents[child], scores[child + 1], documents[child + 1]):
            child += 1
        if not _better(score, document, scores[child], documents[child]):
            break
        scores[position], documents[position] = scores[child], documents[child]
        position = child
    scores[position], documents[position] = score, document


@numba.njit(nogil=True, cache=True)
def _sift_up(scores, documents, position):
    """Moves the entry at `position` up the heap until its parent ranks below it."""
    score, document = scores[position], documents[position]
    while position > 0:
        parent = (position - 1) // 2
        if not _better(scores[parent], documents[parent], score, document):
            break
        scores[position], documents[position] = scores[parent], documents[parent]
        position = parent
    scores[position], documents[position] = score, document


@numba.njit(nogil=True, cache=True)
def _rank_rows(starts, ends, row_weights, row_bounds, constant, documents, weights, totals, heap_scores, heap_documents):
    """Adds up postings starts[i]:ends[i] times row_weights[i] into `totals` (all zeros before and
    after), ranks the documents they touch into the heap slots, best first, and returns how many."""
    for row in range(len(starts)):
        for posting in range(starts[row], ends[row]):
            totals[documents[posting]] += row_weights[row] * weights[posting]
    # The rows again, those that can add the most first. Once the heap's worst entry beats all that
    # the rows left could add up to (reach), a document only in them cannot enter: those rows are
    # only reset (the margin of 1e-9 covers rounding in the sums). The heap keeps its worst at 0.
    order = np.argsort(-row_bounds)
    reach = np.cumsum(row_bounds[order][::-1])[::-1]
    capacity, size = len(heap_scores), 0
    for rank in range(len(order)):
        postings = range(starts[order[rank]], ends[order[rank]])
        if size == capacity and heap_scores[0] > constant + reach[rank] * (1 + 1e-9):
            for posting in postings:
                totals[documents[posting]] = 0.0
            continue
        for posting in postings:
            document = documents[posting]
            total = totals[document]
            totals[document] = 0.0
            score = total + constant
            # Most documents rank below the k-th best: tested first, this branch is predictable.
            if size == capacity and not _better(score, document, heap_scores[0], heap_documents[0]):
                continue
            if total == 0.0:  # visited already, or an exact-zero sum, which NumPy's path leaves out
                continue
            if size < capacity:
                heap_scores[size], heap_documents[size] = score, document
                _sift_up(heap_scores, heap_documents, size)
                size += 1
            else:
                heap_scores[0], heap_documents[0] = score, document
                _sift_down(heap_scores, heap_documents, 0, size)
    for end in range(size - 1, 0, -1):  # heap sort: the worst goes last, the best ends first
        heap_scores[0], heap_scores[end] = heap_scores[end], heap_scores[0]
        heap_documents[0], heap_documents[end] = heap_documents[end], heap_documents[0]
        _sift_down(heap_scores, heap_documents, 0, end)
    return size


@numba.njit(nogil=True, cache=True)
def _output_slots(indptr, query_indptr, query_terms, k):
    """Each query's output offsets, min(k, its postings) slots (the most it can match), and the
    arrays for the ranked documents, their scores and each query's count."""
    n_queries = len(query_indptr) - 1
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    for query in range(n_queries):
        terms = query_terms[query_indptr[query] : query_indptr[query + 1]]
        offsets[query + 1] = offsets[query] + min(k, (indptr[terms + 1] - indptr[terms]).sum())
    return offsets, np.empty(offsets[-1], dtype=np.int64), np.empty(offsets[-1]), np.zeros(n_queries, dtype=np.int64)


@numba.njit(nogil=True, cache=True)
def _rank_queries(indptr, documents, weights, row_bounds, query_indptr, query_terms, query_weights, constants,
                  first, last, totals, offsets, best_documents, best_scores, counts):
    """Ranks queries first..last-1 of a batch into their output slots."""
    for query in range(first, last):
        entries = slice(query_indptr[query], query_indptr[query + 1])
        terms, slots = query_terms[entries], slice(offsets[query], offsets[query + 1])
        counts[query] = _rank_rows(
            indptr[terms], indptr[terms + 1], query_weights[entries], query_weights[entries] * row_bounds[terms],
            constants[query], documents, weights, totals, best_scores[slots], best_documents[slots],
        )


@numba.njit(nogil=True, cache=True)
def _rank_one(indptr, documents, weights, row_bounds, terms, term_weights, constants, k, totals):
    """A lone query in one call: its (documents, scores), best first."""
    starts, ends = indptr[terms], indptr[terms + 1]
    capacity = min(k, (ends - starts).sum())
    best_scores, best_documents = np.empty(capacity), np.empty(capacity, dtype=np.int64)
    size = _rank_rows(starts, ends, term_weights, term_weights * row_bounds[terms], constants[0], documents, weights,
                      totals, best_scores, best_documents)
    return best_documents[:size], best_scores[:size]


class _DenseArrays:
    """Score arrays, one a document, all zeros when not in use: each ranking under way borrows one,
    so a lone query allocates nothing the corpus's size and concurrent callers never share one."""

    def __init__(self) -> None:
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()

    @contextlib.contextmanager
    def borrowed(self, n_documents: int) -> Iterator[np.ndarray]:
        try:
            totals = self._free.get_nowait()
        except queue.Empty:
            totals = np.zeros(0)
        if len(totals) < n_documents:
            totals = np.zeros(n_documents)
        yield totals
        self._free.put(totals)  # not on an error: the array may be left dirty


_dense_arrays = _DenseArrays()


@functools.cache
def _workers(n_threads: int, process_id: int) -> concurrent.futures.ThreadPoolExecutor:
    """The threads ranking batches; per process, as a forked child has none of its parent's."""
    return concurrent.futures.ThreadPoolExecutor(n_threads, thread_name_prefix="lmforge-bm25")


def top_k(indptr: np.ndarray, documents: np.ndarray, weights: np.ndarray, row_bounds: np.ndarray, n_documents: int,
          queries: Queries, k: int) -> list[Ranked]:
    """The k best documents of each query that shares a term with them, as `Postings.top_k` over
    the same W (its CSR arrays, row bounds and document count: the kernels take arrays, not objects).

    A batch is cut into runs of queries that threads take one after another, each thread
    taking the next run as it frees up: a thread slowed by other work on the machine then simply
    takes fewer (numba's own parallel loops split work evenly up front, and wait for the slowest).
    The kernels release the GIL, so the threads run truly in parallel.
    """
    arrays = (indptr, documents, weights, row_bounds)
    k = min(k, n_documents)
    if len(queries) == 1:
        with _dense_arrays.borrowed(n_documents) as totals:
            return [_rank_one(*arrays, queries.term_ids, queries.weights, queries.constants, k, totals)]
    query_arrays = (queries.indptr, queries.term_ids, queries.weights, queries.constants)
    offsets, best_documents, best_scores, counts = _output_slots(indptr, queries.indptr, queries.term_ids, k)

    def rank(first: int, last: int) -> None:
        with _dense_arrays.borrowed(n_documents) as totals:
            _rank_queries(*arrays, *query_arrays, first, last, totals, offsets, best_documents, best_scores, counts)

    n_threads = min(numba.config.NUMBA_NUM_THREADS, max(1, DENSE_BYTES // (8 * n_documents)))
    run = max(MIN_RUN, -(-len(queries) // (RUNS_A_THREAD * n_threads)))
    if n_threads == 1 or len(queries) <= run:
        rank(0, len(queries))
    else:
        starts = range(0, len(queries), run)
        list(_workers(n_threads, os.getpid()).map(rank, starts, [min(start + run, len(queries)) for start in starts]))
    return [
        (best_documents[start : start + count], best_scores[start : start + count])
        for start, count in zip(offsets.tolist(), counts.tolist())
    ]
