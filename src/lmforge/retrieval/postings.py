"""The precomputed BM25 weight matrix W (terms × documents, CSR) and ranking queries against it.

Row t of W holds term t's postings: the documents containing it, in document order, and the
term's BM25 weight in each (see `bm25.py`). A query's scores are a weighted sum of a few rows of W.
A lone query (the command line) is summed into a dense array with NumPy alone; a batch is a
sparse product Q @ W with scipy (imported only then, so `lmforge bm25 search --query` starts
quickly), a bounded chunk of queries at a time. Both add a query's terms in the same order (by
term id), so they agree to the last bit. Then one `np.partition` per query finds its k-th best
score, and a single sort of the few entries at or above those orders the whole batch's answers.

Only documents sharing a term with the query are ranked (one whose terms add exactly 0 is left
out too): the others all tie at the query's constant, the lowest score a document can get.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from lmforge.retrieval.bm25 import BM25Parameters, term_weights

Ranked = tuple[np.ndarray, np.ndarray]  # (document positions, scores), best first

# Postings one sparse product may add up: bounds its memory (~16 bytes an entry), and smaller
# products stay in cache.
PRODUCT_POSTINGS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Queries:
    """A batch of analyzed queries in CSR form: row i's terms are term_ids[indptr[i]:indptr[i+1]],
    in increasing order, with their query weights; constants[i] is added to every document."""

    indptr: np.ndarray
    term_ids: np.ndarray
    weights: np.ndarray
    constants: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1


@dataclasses.dataclass(frozen=True)
class Postings:
    """W in CSR form, possibly memory-mapped; `absent[t]` is term t's score where it is absent."""

    indptr: np.ndarray
    documents: np.ndarray
    weights: np.ndarray
    absent: np.ndarray
    n_documents: int

    @property
    def n_terms(self) -> int:
        return len(self.indptr) - 1

    def scores(self, queries: Queries, row: int) -> np.ndarray:
        """Every document's score for one query (without its constant), as a dense array."""
        totals = np.zeros(self.n_documents)
        start, end = queries.indptr[row], queries.indptr[row + 1]
        for term_id, weight in zip(queries.term_ids[start:end].tolist(), queries.weights[start:end].tolist()):
            first, last = self.indptr[term_id], self.indptr[term_id + 1]
            totals[self.documents[first:last]] += weight * self.weights[first:last]  # no repeats in a row
        return totals

    def top_k(self, queries: Queries, k: int) -> list[Ranked]:
        """The k best documents of each query that shares a term with them; ties by document order."""
        if len(queries) == 0:
            return []
        if len(queries) == 1:
            totals = self.scores(queries, 0)
            matched = np.flatnonzero(totals)
            return _best_per_row(np.array([0, len(matched)]), matched, totals[matched] + queries.constants[0], k)
        import scipy.sparse

        query_matrix = scipy.sparse.csr_matrix(
            (queries.weights, queries.term_ids, queries.indptr), shape=(len(queries), self.n_terms)
        )
        weight_matrix = scipy.sparse.csr_matrix(
            (self.weights, self.documents, self.indptr), shape=(self.n_terms, self.n_documents), copy=False
        )
        results: list[Ranked] = []
        for start, end in self._chunks(queries):
            products = query_matrix[start:end] @ weight_matrix  # drops exact-0 sums, as flatnonzero does
            if queries.constants.any():
                products.data += np.repeat(queries.constants[start:end], np.diff(products.indptr))
            results.extend(_best_per_row(products.indptr, products.indices, products.data, k))
        return results

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
