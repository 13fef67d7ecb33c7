"""The precomputed BM25 weight matrix W (terms × documents, CSR) and ranking queries against it.

Row t of W holds term t's postings: the documents containing it, in document order, and the
term's BM25 weight in each (see `bm25.py`). A query's scores are a weighted sum of a few rows of W,
added in the same order (the query's terms by id) on every path below, so all agree to the last bit:

- numba installed, once a process has ranked COMPILED_AFTER queries: `compiled_ranking.py`, a
  compiled loop over the postings (batches in parallel), several times faster than NumPy. Before
  that, and without numba, NumPy ranks: loading numba costs about a second, more than a lone
  command-line query takes, so `lmforge bm25 search --query` never pays it.
- a lone query with NumPy alone: its rows concatenated, summed per document by one `bincount`;
- a batch with scipy (imported only then): a sparse product Q @ W, a bounded chunk of queries at a
  time, then one `np.partition` per query finds its k-th best score, and a single sort of the few
  entries at or above those orders the whole batch's answers.

Only documents sharing a term with the query are ranked (one whose terms add exactly 0 is left
out too): the others all tie at the query's constant, the lowest score a document can get.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from types import ModuleType

import numpy as np

from lmforge.retrieval.bm25 import BM25Parameters, term_weights
from lmforge.retrieval.queries import Queries, Ranked

# Postings one sparse product may add up: bounds its memory (~16 bytes an entry), and smaller
# products stay in cache.
PRODUCT_POSTINGS = 1 << 20

# Queries a process ranks with NumPy before the compiled ranking takes over (when numba is
# installed): loading numba costs about what NumPy takes for this many queries. 0: compiled from
# the first query; sys.maxsize: NumPy always.
COMPILED_AFTER = 2_000
_queries_ranked = 0

# A lone query touching fewer documents than this fraction of the corpus finds them by sorting
# its postings; one touching more, by scanning a dense array of every document's score.
SORT_BELOW = 1 / 16


@dataclasses.dataclass(frozen=True)
class Postings:
    """W in CSR form, possibly memory-mapped; `absent[t]` is term t's score where it is absent."""

    indptr: np.ndarray
    documents: np.ndarray
    weights: np.ndarray
    absent: np.ndarray
    n_documents: int

    def __post_init__(self) -> None:
        # W never changes once built; read-only alike, built and loaded arrays (memory-mapped or
        # not) share one compiled version of the ranking rather than each compiling its own.
        for array in (self.indptr, self.documents, self.weights, self.absent):
            array.flags.writeable = False

    @property
    def n_terms(self) -> int:
        return len(self.indptr) - 1

    @functools.cached_property
    def row_bounds(self) -> np.ndarray:
        """Per term, the most its row can add to a score, its largest weight: the compiled ranking
        skips rows by it. Infinite (no row skipped) where a weight is negative, as okapi's floored
        IDF can make it in a corpus whose terms are mostly in most documents."""
        if (self.weights < 0).any():
            return np.full(self.n_terms, np.inf)
        bounds = np.zeros(self.n_terms)
        filled = np.diff(self.indptr) > 0
        bounds[filled] = np.maximum.reduceat(self.weights, self.indptr[:-1][filled])
        return bounds

    def scores(self, queries: Queries, row: int) -> np.ndarray:
        """Every document's score for one query (without its constant), as a dense array."""
        return np.bincount(*self._postings_of(queries, row), minlength=self.n_documents)

    def top_k(self, queries: Queries, k: int) -> list[Ranked]:
        """The k best documents of each query that shares a term with them; ties by document order."""
        if len(queries) == 0:
            return []
        compiled_ranking = _compiled_ranking(len(queries))
        if compiled_ranking is not None:
            return compiled_ranking.top_k(self.indptr, self.documents, self.weights, self.row_bounds, self.n_documents, queries, k)
        if len(queries) == 1:
            return [self._top_k_of_one(queries, k)]
        import scipy.sparse

        query_matrix = scipy.sparse.csr_matrix(
            (queries.weights, queries.term_ids, queries.indptr), shape=(len(queries), self.n_terms)
        )
        weight_matrix = scipy.sparse.csr_matrix(
            (self.weights, self.documents, self.indptr), shape=(self.n_terms, self.n_documents), copy=False
        )
        results: list[Ranked] = []
        for start, end in self._chunks(queries):
            products = query_matrix[start:end] @ weight_matrix  # drops exact-0 sums, as the others do
            if queries.constants.any():
                products.data += np.repeat(queries.constants[start:end], np.diff(products.indptr))
            results.extend(_best_per_row(products.indptr, products.indices, products.data, k))
        return results

    def _postings_of(self, queries: Queries, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The documents of one query's postings and what each adds to its score, term after term."""
        start, end = queries.indptr[row], queries.indptr[row + 1]
        rows = [(self.indptr[term_id], self.indptr[term_id + 1], weight)
                for term_id, weight in zip(queries.term_ids[start:end].tolist(), queries.weights[start:end].tolist())]
        if not rows:
            return np.zeros(0, dtype=self.documents.dtype), np.zeros(0)
        return (np.concatenate([self.documents[first:last] for first, last, _ in rows]),
                np.concatenate([weight * self.weights[first:last] for first, last, weight in rows]))

    def _top_k_of_one(self, queries: Queries, k: int) -> Ranked:
        """The lone query's ranking with NumPy: only its touched documents are ever sorted."""
        documents, contributions = self._postings_of(queries, 0)
        totals = np.bincount(documents, contributions, minlength=self.n_documents)  # adds in term order
        if len(documents) < SORT_BELOW * self.n_documents:
            touched = np.unique(documents)
            matched = touched[totals[touched] != 0]
        else:
            matched = np.flatnonzero(totals != 0)  # on booleans: several times faster than on floats
        scores = totals[matched] + queries.constants[0]
        if len(matched) > k:  # keep the k best and those tied with the k-th, then sort those alone
            kept = scores >= np.partition(scores, len(scores) - k)[len(scores) - k]
            matched, scores = matched[kept], scores[kept]
        order = np.lexsort((matched, -scores))[:k]
        return matched[order], scores[order]

    def _chunks(self, queries: Queries) -> list[tuple[int, int]]:
        """Consecutive query ranges whose products hold at most PRODUCT_POSTINGS entries (or one
        query), so that memory stays bounded whatever the batch."""
        rows = np.repeat(np.arange(len(queries)), np.diff(queries.indptr))
        per_query = np.bincount(rows, np.diff(self.indptr)[queries.term_ids], minlength=len(queries))
        chunks, start, total = [], 0, 0
        for row, size in enumerate(per_query.tolist()):
            if row > start and total + size > PRODUCT_POSTINGS:
                chunks.append((start, row))
                start, total = row, 0
            total += size
        chunks.append((start, len(queries)))
        return chunks


def _best_per_row(indptr: np.ndarray, documents: np.ndarray, scores: np.ndarray, k: int) -> list[Ranked]:
    """The k best (document, score) entries of every row of a CSR result, best first, ties by
    document order: vectorised over the rows, so that a batch costs few NumPy calls."""
    n_rows = len(indptr) - 1
    lengths = np.diff(indptr)
    rows = np.repeat(np.arange(n_rows), lengths)
    thresholds = np.full(n_rows, -np.inf)  # each row's k-th best score; rows of k or fewer keep all
    for row in np.flatnonzero(lengths > k).tolist():
        row_scores = scores[indptr[row] : indptr[row + 1]]
        thresholds[row] = np.partition(row_scores, len(row_scores) - k)[len(row_scores) - k]
    kept = np.flatnonzero(scores >= thresholds[rows])  # ties with the k-th stay, for the sort
    kept = kept[np.lexsort((documents[kept], -scores[kept], rows[kept]))]
    kept_rows = rows[kept]
    rank_in_row = np.arange(len(kept)) - np.searchsorted(kept_rows, kept_rows)
    kept = kept[rank_in_row < k]
    bounds = np.searchsorted(rows[kept], np.arange(n_rows + 1)).tolist()
    best_documents, best_scores = documents[kept], scores[kept]
    return [(best_documents[start:end], best_scores[start:end]) for start, end in itertools.pairwise(bounds)]


def _compiled_ranking(n_queries: int) -> ModuleType | None:
    """`compiled_ranking` once this process has ranked enough queries, these included; else None."""
    global _queries_ranked
    _queries_ranked += n_queries
    return _load_compiled_ranking() if _queries_ranked > COMPILED_AFTER else None


@functools.cache
def _load_compiled_ranking() -> ModuleType | None:
    """The compiled ranking, or None where numba is missing or cannot load (NumPy ranks then)."""
    try:
        from lmforge.retrieval import compiled_ranking
    except ImportError:
        return None
    return compiled_ranking


def build_postings(term_ids: np.ndarray, lengths: np.ndarray, n_terms: int, parameters: BM25Parameters) -> tuple[Postings, float]:
    """W and avgdl from every document's term ids, concatenated in document order, and the
    documents' lengths. Memory is a few arrays the size of the corpus in terms, never N × V."""
    n_documents = len(lengths)
    documents = np.repeat(np.arange(n_documents, dtype=np.int64), lengths)
    # One key per term occurrence, sorted by term then document: the distinct keys are the
    # postings in CSR order, and their counts the term frequencies.
    keys, frequencies = np.unique(term_ids.astype(np.int64) * n_documents + documents, return_counts=True)
    del documents
    posting_terms = keys // n_documents
    posting_documents = keys - posting_terms * n_documents
    del keys
    document_frequency = np.bincount(posting_terms, minlength=n_terms)
    average_length = float(lengths.sum() / n_documents)  # over every document, empty ones too
    weights, absent = term_weights(
        posting_terms, frequencies, lengths[posting_documents] / average_length,
        document_frequency, n_documents, parameters,
    )
    # int32 indices when they fit, indptr included, so scipy takes the arrays as they are.
    index_dtype = np.int32 if max(len(weights), n_documents) < 2**31 else np.int64
    indptr = np.zeros(n_terms + 1, dtype=index_dtype)
    np.cumsum(document_frequency, out=indptr[1:])
    postings = Postings(indptr, posting_documents.astype(index_dtype), weights, absent, n_documents)
    return postings, average_length
