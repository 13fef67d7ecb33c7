"""The ranking of `postings.py` compiled with numba: the same sums in the same order, so the same
scores to the last bit, with neither NumPy's temporary arrays nor its per-call overhead.

A query's rows of W are added into a dense array of scores, one entry a document. Then its rows
are walked again, those that can add the most first: a document's first visit takes its total and
resets it to 0, so later visits pass it by, and a heap keeps the k best (score, document) pairs.
Once the heap's worst beats what the remaining rows could add up to, those rows are only reset
(MaxScore's bound, Turtle & Flood 1995): a frequent word's long row is summed but rarely ranked.
A query thus costs at most twice its postings, never the whole corpus. A batch shares its queries
among numba's threads, each with a dense array of its own.

Importing this module imports numba, about a second (the first time ever, a compile of a few
seconds, cached on disk since): `postings.py` imports it only once enough queries have come.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numba
import numpy as np

if TYPE_CHECKING:
    from lmforge.retrieval.postings import Postings, Queries, Ranked

# A batch's dense arrays (8 bytes a document, one array a thread) stay under this: fewer threads
# rank a batch over a corpus too large for one array each.
DENSE_BYTES = 1 << 28
# Queries a thread takes at a time: few enough to even out the threads' loads.
QUERIES_A_RUN = 16

# numba's default threading layer refuses concurrent launches, and the lone query's array is shared.
_lock = threading.Lock()
_lone_query_totals = np.zeros(0)  # all zeros between calls


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


@numba.njit(parallel=True, cache=True)
def _rank_batch(indptr, documents, weights, row_bounds, query_indptr, query_terms, query_weights, constants,
                k, n_documents, n_threads):
    """A batch, its queries handed out to the threads in small runs as each thread frees up (a
    thread slowed by other work then takes fewer), each thread summing into its own dense array;
    returns each query's output offsets, and the ranked documents, scores and counts."""
    n_queries = len(query_indptr) - 1
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    for query in range(n_queries):  # min(k, its postings) slots: the most a query can match
        terms = query_terms[query_indptr[query] : query_indptr[query + 1]]
        offsets[query + 1] = offsets[query] + min(k, (indptr[terms + 1] - indptr[terms]).sum())
    best_documents, best_scores = np.empty(offsets[-1], dtype=np.int64), np.empty(offsets[-1])
    counts = np.zeros(n_queries, dtype=np.int64)
    totals = np.zeros((n_threads, n_documents))
    for query in numba.prange(n_queries):
        entries = slice(query_indptr[query], query_indptr[query + 1])
        terms, slots = query_terms[entries], slice(offsets[query], offsets[query + 1])
        counts[query] = _rank_rows(
            indptr[terms], indptr[terms + 1], query_weights[entries], query_weights[entries] * row_bounds[terms],
            constants[query], documents, weights, totals[numba.get_thread_id()], best_scores[slots], best_documents[slots],
        )
    return offsets, best_documents, best_scores, counts


@numba.njit(nogil=True, cache=True)
def _rank_one(indptr, documents, weights, row_bounds, terms, term_weights, constants, k, totals):
    """A lone query, into the caller's dense array: no thread woken (that would cost more than a
    lone query gains), nothing the corpus's size allocated."""
    starts, ends = indptr[terms], indptr[terms + 1]
    capacity = min(k, (ends - starts).sum())
    best_scores, best_documents = np.empty(capacity), np.empty(capacity, dtype=np.int64)
    size = _rank_rows(starts, ends, term_weights, term_weights * row_bounds[terms], constants[0], documents, weights,
                      totals, best_scores, best_documents)
    return best_documents[:size], best_scores[:size]


def top_k(postings: Postings, queries: Queries, k: int) -> list[Ranked]:
    """The k best documents of each query that shares a term with them, as `Postings.top_k`."""
    global _lone_query_totals
    arrays = (postings.indptr, postings.documents, postings.weights, postings.row_bounds)
    k = min(k, postings.n_documents)
    with _lock:
        if len(queries) == 1:
            if len(_lone_query_totals) < postings.n_documents:
                _lone_query_totals = np.zeros(postings.n_documents)
            return [_rank_one(*arrays, queries.term_ids, queries.weights, queries.constants, k, _lone_query_totals)]
        threads, chunksize = numba.get_num_threads(), numba.get_parallel_chunksize()
        n_threads = min(threads, max(1, DENSE_BYTES // (8 * postings.n_documents)))
        numba.set_num_threads(n_threads)
        numba.set_parallel_chunksize(QUERIES_A_RUN)
        try:
            offsets, best_documents, best_scores, counts = _rank_batch(
                *arrays, queries.indptr, queries.term_ids, queries.weights, queries.constants, k,
                postings.n_documents, n_threads,
            )
        finally:
            numba.set_num_threads(threads)
            numba.set_parallel_chunksize(chunksize)
    return [
        (best_documents[start : start + count], best_scores[start : start + count])
        for start, count in zip(offsets.tolist(), counts.tolist())
    ]
