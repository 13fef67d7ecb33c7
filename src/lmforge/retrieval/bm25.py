"""The BM25 scoring function and its variants, as pure NumPy over postings.

For a query Q and a document d:

    Score(Q, d) = sum over the query's terms q_i (each occurrence) of IDF(q_i) · R(q_i, d)

    R(q, d) = f · (k1 + 1) / (f + K)  ·  qf · (k2 + 1) / (qf + k2)
    K       = k1 · (1 − b + b · dl / avgdl)

with N documents, n(q) of them containing q, f the frequency of q in d, qf its frequency in Q, dl
the length of d in terms and avgdl the mean length. k1 saturates term frequency, b normalises
for length. With k2 = 0 (the default) the query factor is 1, so a term written twice in the query
counts twice, as rank_bm25 and bm25s count it; k2 > 0 weighs repeated query terms further.
A query term absent from the vocabulary contributes nothing.

Variants (`--variant`) change IDF and the document factor R_d = f · (k1 + 1) / (f + K):

- `okapi`: IDF = log((N − n + 0.5) / (n + 0.5)). A term in more than half of the documents has a
  negative IDF; it gets ε · (mean IDF over the vocabulary) instead (`--epsilon`, 0.25), as in
  rank_bm25's BM25Okapi, whose scores this equals.
- `lucene`: IDF = log(1 + (N − n + 0.5) / (n + 0.5)), never negative, and R_d = f / (f + K):
  Lucene 8 dropped the constant (k1 + 1), which changes no ranking (Kamphuis et al., ECIR 2020).
  Equals bm25s's default method.
- `bm25+`: IDF = log((N + 1) / n), R_d = f · (k1 + 1) / (f + K) + δ (`--delta`, 1), so that a long
  document containing a term always beats one without it (Lv & Zhai, CIKM 2011). As in rank_bm25's
  BM25Plus and in Trotman et al. (ADCS 2014), δ is added for every query term, present in d or not.
- `bm25l`: IDF = log((N + 1) / (n + 0.5)), c = f / (1 − b + b · dl / avgdl),
  R_d = (k1 + 1) · (c + δ) / (k1 + c + δ) (`--delta`, 0.5) (Lv & Zhai, "When documents are very
  long, BM25 fails!", SIGIR 2011; over every query term as in Trotman et al. and bm25s, and as in
  rank_bm25 after its fix of the BM25L formula, dorianbrown/rank_bm25#20).

For bm25+ and bm25l a term absent from d still scores IDF · R_d(f = 0). The index stores, per
posting, R_d(f) − R_d(0) times IDF, and per term the constant IDF · R_d(0); a query adds its terms'
constants to every document, so every document's score is exact while the matrix stays sparse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from lmforge.errors import LmforgeError

DEFAULT_DELTA = {"bm25+": 1.0, "bm25l": 0.5}


@dataclasses.dataclass(frozen=True)
class BM25Parameters:
    """The scoring parameters an index is built with (stored in it, shown by `--help`)."""

    variant: str = "okapi"
    k1: float = 1.5
    b: float = 0.75
    k2: float = 0.0
    epsilon: float = 0.25
    delta: float | None = None  # None: the variant's usual value (bm25+ 1.0, bm25l 0.5)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise LmforgeError(f"--variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if not self.k1 > 0:
            raise LmforgeError(f"--k1 must be positive (1.2 to 2 is usual), got {self.k1}")
        if not 0 <= self.b <= 1:
            raise LmforgeError(f"--b must lie between 0 and 1 (0.75 is usual), got {self.b}")
        for name in ("k2", "epsilon"):
            if not getattr(self, name) >= 0:
                raise LmforgeError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if self.delta is None:
            object.__setattr__(self, "delta", DEFAULT_DELTA.get(self.variant, 0.0))
        elif not self.delta >= 0:
            raise LmforgeError(f"--delta must be 0 or more, got {self.delta}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _okapi_idf(document_frequency: np.ndarray, n_documents: int, epsilon: float) -> np.ndarray:
    idf = np.log(n_documents - document_frequency + 0.5) - np.log(document_frequency + 0.5)
    return np.where(idf < 0, epsilon * idf.mean(), idf)


def _lucene_idf(document_frequency: np.ndarray, n_documents: int, epsilon: float) -> np.ndarray:
    return np.log(1 + (n_documents - document_frequency + 0.5) / (document_frequency + 0.5))


def _bm25plus_idf(document_frequency: np.ndarray, n_documents: int, epsilon: float) -> np.ndarray:
    return np.log((n_documents + 1) / document_frequency)


def _bm25l_idf(document_frequency: np.ndarray, n_documents: int, epsilon: float) -> np.ndarray:
    return np.log((n_documents + 1) / (document_frequency + 0.5))


# Document factors R_d(f, length ratio dl / avgdl); f = 0 gives the score of an absent term.
def _saturated(frequency, length_ratio, p: BM25Parameters):
    return frequency * (p.k1 + 1) / (frequency + p.k1 * (1 - p.b + p.b * length_ratio))


def _lucene(frequency, length_ratio, p: BM25Parameters):
    return frequency / (frequency + p.k1 * (1 - p.b + p.b * length_ratio))


def _bm25plus(frequency, length_ratio, p: BM25Parameters):
    return _saturated(frequency, length_ratio, p) + p.delta


def _bm25l(frequency, length_ratio, p: BM25Parameters):
    shifted = frequency / (1 - p.b + p.b * length_ratio) + p.delta
    return (p.k1 + 1) * shifted / (p.k1 + shifted)


Variant = tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]  # (IDF, document factor)
VARIANTS: dict[str, Variant] = {
    "okapi": (_okapi_idf, _saturated),
    "lucene": (_lucene_idf, _lucene),
    "bm25+": (_bm25plus_idf, _bm25plus),
    "bm25l": (_bm25l_idf, _bm25l),
}


def term_weights(
    posting_terms: np.ndarray,
    frequencies: np.ndarray,
    length_ratios: np.ndarray,
    document_frequency: np.ndarray,
    n_documents: int,
    parameters: BM25Parameters,
) -> tuple[np.ndarray, np.ndarray]:
    """(weight of each posting, score of each term in a document without it).

    A posting is one (term, document) pair: its term id, the term's frequency in the document and
    the document's dl / avgdl. The weight is what the posting adds above the absent-term score.
    """
    idf_of, document_factor = VARIANTS[parameters.variant]
    idf = idf_of(document_frequency.astype(np.float64), n_documents, parameters.epsilon)
    absent_factor = document_factor(0.0, 1.0, parameters)  # f = 0: the length ratio cancels out
    factor = document_factor(frequencies.astype(np.float64), length_ratios, parameters)
    weights = idf[posting_terms] * (factor - absent_factor)
    return weights, idf * absent_factor


def query_weights(query_frequencies: np.ndarray, k2: float) -> np.ndarray:
    """Each distinct query term's weight: its qf occurrences, each with qf · (k2 + 1) / (qf + k2)."""
    query_frequencies = query_frequencies.astype(np.float64)
    return query_frequencies * query_frequencies * (k2 + 1) / (query_frequencies + k2)
