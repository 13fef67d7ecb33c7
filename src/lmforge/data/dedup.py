"""Exact and near-duplicate removal across all sources (MinHash with LSH banding, Broder 1997).

Three phases, each parallel and resumable, so the corpus never has to fit in memory:

1. signatures — while documents stream through the filters, each gets a row of 64-bit keys: the
   hash of its normalised text (lower-cased words, no spacing or punctuation), and one key per
   LSH band (the `rows` MinHash values of that band, hashed together). Rows are saved per task.
2. buckets — for each key column and each hash-range shard, sort (key, index) pairs; documents
   sharing a key are linked to the first of them. Memory: 16 bytes per document in the shard;
   the number of shards is chosen so a shard holds at most `max_documents_per_shard` documents.
3. clusters — connected components over the links (scipy) give groups of duplicates; all but the
   earliest document of a group are removed. Memory: about 40 bytes per *duplicated* document.

MinHash itself is vectorised: a batch of documents' shingle hashes is permuted by all
`bands x rows` multiply-shift hash functions in one numpy product and reduced per document with
`np.minimum.reduceat`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import numpy as np

from lmforge.data.batched import batched
from lmforge.data.document import Document
from lmforge.data.recipe import DedupConfig
from lmforge.data.step import FilterStep
from lmforge.data.words import WordBatch, Words, mix64, ngram_hashes, words_of

SHINGLES_PER_CHUNK = 1 << 14  # bounds the (shingles x permutations) matrix to ~20 MB


class MinHasher:
    """MinHash signatures and LSH band keys for word n-gram shingles."""

    def __init__(self, config: DedupConfig):
        self.ngram, self.bands, self.rows = config.ngram, config.bands, config.rows
        generator = np.random.default_rng(config.seed)
        count = config.bands * config.rows
        self.multipliers = generator.integers(1, 1 << 63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.increments = generator.integers(0, 1 << 63, size=count, dtype=np.uint64)

    def shingles(self, words: Words) -> np.ndarray:
        """32-bit shingle hashes: every run of `ngram` words (one shingle for shorter documents)."""
        if len(words) == 0:
            return np.zeros(1, dtype=np.uint64)
        return ngram_hashes(words.hashes, self.ngram) >> np.uint64(32)

    def shingle_sets(self, documents: list[Document]) -> list[np.ndarray]:
        """`shingles` of each document, computed for the batch in one pass over its words."""
        words = WordBatch.of(documents)
        sets = [np.zeros(0, dtype=np.uint64)] * len(documents)
        if len(words.hashes) >= self.ngram:
            grams = ngram_hashes(words.hashes, self.ngram) >> np.uint64(32)
            starts = np.flatnonzero(words.document[: len(grams)] == words.document[self.ngram - 1 :])
            owners = words.document[starts]
            bounds = np.searchsorted(owners, np.arange(len(documents) + 1))
            sets = [grams[starts[low:high]] for low, high in zip(bounds[:-1], bounds[1:])]
        return [shingles if len(shingles) else self.shingles(words_of(document)) for shingles, document in zip(sets, documents)]

    def _permute(self, shingles: np.ndarray) -> np.ndarray:
        # Multiply-shift hashing: the top 32 bits of a * x + b (mod 2^64) for odd random a.
        with np.errstate(over="ignore"):
            return ((shingles[:, None] * self.multipliers + self.increments) >> np.uint64(32)).astype(np.uint32)

    def signatures(self, shingle_sets: list[np.ndarray]) -> np.ndarray:
        """(documents, bands * rows) MinHash values; documents are grouped so each numpy product
        stays near SHINGLES_PER_CHUNK rows, and a long document is reduced slice by slice."""
        result = np.empty((len(shingle_sets), len(self.multipliers)), dtype=np.uint32)
        start = 0
        while start < len(shingle_sets):
            end, total = start, 0
            while end < len(shingle_sets) and (end == start or total + len(shingle_sets[end]) <= SHINGLES_PER_CHUNK):
                total += len(shingle_sets[end])
                end += 1
            if end - start == 1:
                shingles = shingle_sets[start]
                result[start] = np.min(
                    [self._permute(shingles[i : i + SHINGLES_PER_CHUNK]).min(axis=0) for i in range(0, len(shingles), SHINGLES_PER_CHUNK)],
                    axis=0,
                )
            else:
                offsets = np.cumsum([0] + [len(shingles) for shingles in shingle_sets[start : end - 1]])
                result[start:end] = np.minimum.reduceat(self._permute(np.concatenate(shingle_sets[start:end])), offsets, axis=0)
            start = end
        return result

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(documents, bands) 64-bit keys: documents agreeing on all `rows` values of a band share its key."""
        banded = signatures.reshape(len(signatures), self.bands, self.rows).astype(np.uint64)
        keys = np.zeros(banded.shape[:2], dtype=np.uint64)
        for row in range(self.rows):
            keys = mix64(keys ^ banded[:, :, row])
        return keys


def exact_key(words: Words) -> int:
    """Hash of the normalised text: its lower-cased words in order, without spacing or punctuation."""
    return int.from_bytes(hashlib.blake2b(words.hashes.tobytes(), digest_size=8).digest(), "little")


class SignatureCollector:
    """Passes documents through and records, per document, its key row (exact key, then band
    keys), its length in characters and its source's index."""

    def __init__(self, config: DedupConfig, source_index: dict[str, int], batch_size: int = 256):
        self.config = config
        self.hasher = MinHasher(config)
        self.source_index = source_index
        self.batch_size = batch_size
        self.keys: list[np.ndarray] = []
        self.characters: list[int] = []
        self.sources: list[int] = []

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(documents, self.batch_size):
            yield from self._record(batch)

    def _record(self, batch: list[Document]) -> list[Document]:
        words = [words_of(document) for document in batch]
        columns = [np.array([exact_key(w) for w in words], dtype=np.uint64)[:, None]]
        if self.config.near:
            signatures = self.hasher.signatures(self.hasher.shingle_sets(batch))
            columns.append(self.hasher.band_keys(signatures))
        self.keys.append(np.concatenate(columns, axis=1))
        self.characters += [len(document.text) for document in batch]
        self.sources += [self.source_index[document.source] for document in batch]
        return batch

    def key_matrix(self) -> np.ndarray:
        """(key columns, documents): one contiguous row per column, so phase 2 reads only its row."""
        columns = 1 + (self.config.bands if self.config.near else 0)
        rows = np.concatenate(self.keys) if self.keys else np.zeros((0, columns), dtype=np.uint64)
        return np.ascontiguousarray(rows.T)

    def document_table(self) -> np.ndarray:
        """(2, documents): characters and source index of each document, for mixing."""
        return np.array([self.characters, self.sources], dtype=np.int64).reshape(2, -1)


def duplicate_links(key_rows: Iterable[tuple[int, np.ndarray]], shard: int, shards: int) -> np.ndarray:
    """(links, 2) pairs (first, later) of global document indices sharing a key. `key_rows` gives
    each task's first global index and its keys for one column; only keys in `shard` are used."""
    keys, indices = [], []
    for offset, row in key_rows:
        selected = np.flatnonzero(row % np.uint64(shards) == shard) if shards > 1 else np.arange(len(row))
        keys.append(row[selected])
        indices.append(selected.astype(np.int64) + offset)
    keys_all = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    if len(keys_all) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    indices_all = np.concatenate(indices)
    order = np.argsort(keys_all, kind="stable")  # indices arrive ascending: the first in a group is the earliest
    keys_all, indices_all = keys_all[order], indices_all[order]
    starts = np.concatenate(([True], keys_all[1:] != keys_all[:-1]))
    group = np.cumsum(starts) - 1
    first = indices_all[starts][group]
    later = ~starts
    return np.stack([first[later], indices_all[later]], axis=1)


def removed_documents(links: np.ndarray, exact_links: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted global indices to remove, whether each is an exact duplicate): every document of a
    connected group of links except the earliest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    all_links = np.concatenate([links, exact_links]) if len(exact_links) else links
    if len(all_links) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    nodes, compact = np.unique(all_links, return_inverse=True)
    compact = compact.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(compact), dtype=np.int8), (compact[:, 0], compact[:, 1])), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    _, first_of_label = np.unique(labels, return_index=True)  # nodes are sorted, so the first is the earliest
    keeper = nodes[first_of_label][labels]
    removed = nodes[nodes != keeper]
    return removed, np.isin(removed, exact_links[:, 1]) if len(exact_links) else np.zeros(len(removed), dtype=bool)


class DedupStep(FilterStep):
    """Drops the documents phase 3 marked, by their position in the task's stream; reasons are
    `exact_duplicate` and `near_duplicate`."""

    name = "dedup"

    def __init__(self, first_index: int, removed: np.ndarray, exact: np.ndarray):
        super().__init__()
        self.position = first_index
        self.reasons = {int(index): "exact_duplicate" if is_exact else "near_duplicate" for index, is_exact in zip(removed, exact)}

    def reject(self, document: Document) -> str | None:
        reason = self.reasons.get(self.position)
        self.position += 1
        return reason
