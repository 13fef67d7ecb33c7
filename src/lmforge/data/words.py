"""What a "word" is, for the filters, deduplication and quality features alike.

Chinese and Japanese have no spaces between words, and a word segmenter is a heavy dependency
with its own errors. So each Han character (and each kana) counts as one word, and elsewhere a word
is a run of letters, digits and marks. For Chinese this makes word counts character counts and word
n-grams character n-grams, which is what character-based Chinese filters and MinHash use anyway.

A document is analysed once, with numpy over its code points (no Python loop per word), into
`Words`: a stable 64-bit hash, a length and two flags per word. Every later rule reads that.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np

from lmforge.data.batched import batched
from lmforge.data.document import Document

OTHER, WORD_CHAR, LETTER, CJK = 0, 1, 2, 3
HAN_RANGES = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F)]
KANA_RANGE = (0x3040, 0x30FF)
_POWERS = np.array([pow(0x100000001B3, k, 1 << 64) for k in range(64)], dtype=np.uint64)


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: its class (other / word character / letter / CJK) and its lower-case form.
    Built once per process from `unicodedata` (about half a second)."""
    classes = np.zeros(0x110000, dtype=np.uint8)
    lower = np.arange(0x110000, dtype=np.uint64)
    for code_point in range(0x110000):
        if code_point in range(0xD800, 0xE000):
            continue
        character = chr(code_point)
        category = unicodedata.category(character)
        if category[0] == "L":
            classes[code_point] = LETTER
            lowered = character.lower()
            if len(lowered) == 1 and lowered != character:
                lower[code_point] = ord(lowered)
        elif category[0] in "NM" or character == "_":
            classes[code_point] = WORD_CHAR
    for first, last in [*HAN_RANGES, KANA_RANGE]:
        classes[first : last + 1] = CJK
    return classes, lower


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over every output bit."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


@dataclasses.dataclass
class Words:
    """The words of one text: a lower-cased hash, a length in characters, whether the word is a
    single CJK character, whether it holds a letter."""

    hashes: np.ndarray
    lengths: np.ndarray
    cjk: np.ndarray
    alpha: np.ndarray

    def __len__(self) -> int:
        return len(self.hashes)


def analyse_many(texts: list[str]) -> list[Words]:
    """`Words` of each text, computed in one numpy pass over all of them (the texts are joined by
    newlines, which no word crosses), so short documents do not each pay numpy's call overhead."""
    if not texts:
        return []
    classes_table, lower_table = tables()
    points = code_points("\n".join(texts))
    classes = classes_table[points]
    is_word = classes != OTHER
    is_cjk = classes == CJK
    previous_word = np.concatenate(([False], is_word[:-1]))
    previous_cjk = np.concatenate(([False], is_cjk[:-1]))
    starts = is_word & (is_cjk | ~previous_word | previous_cjk)
    positions = np.flatnonzero(is_word)
    word_starts = np.flatnonzero(starts[positions])  # index into `positions` where each word begins
    lengths = np.diff(np.append(word_starts, len(positions)))
    offset_in_word = np.arange(len(positions)) - np.repeat(word_starts, lengths)
    with np.errstate(over="ignore"):
        terms = (lower_table[points[positions]] + np.uint64(1)) * _POWERS[offset_in_word & 63]
    if len(word_starts):
        hashes = mix64(np.add.reduceat(terms, word_starts) ^ lengths.astype(np.uint64))
        alpha = np.maximum.reduceat(classes[positions] >= LETTER, word_starts)
    else:
        hashes, alpha = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
    cjk = is_cjk[positions[word_starts]]
    # Which words belong to which text: text k starts at character sum(len(texts[:k]) + 1).
    text_starts = np.cumsum([0] + [len(text) + 1 for text in texts[:-1]])
    bounds = np.searchsorted(positions[word_starts], text_starts).tolist() + [len(word_starts)]
    return [
        Words(hashes[first:last], lengths[first:last], cjk[first:last], alpha[first:last])
        for first, last in zip(bounds[:-1], bounds[1:])
    ]


def analyse(text: str) -> Words:
    return analyse_many([text])[0]


def hash_words(text: str) -> set[int]:
    """The word hashes of `text` as a set, for word lists such as stop words."""
    return {int(value) for value in analyse(text).hashes}


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every run of `n` consecutive words (a single hash of all words when there are fewer):
    a polynomial over the word hashes, then one mixing pass."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        n, count = len(word_hashes), min(len(word_hashes), 1)
    result = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(n):
            result = result * np.uint64(0x9E3779B97F4A7C15) + word_hashes[offset : offset + count]
    return mix64(result)


@dataclasses.dataclass
class WordBatch:
    """The words of several documents end to end, with the document each word belongs to, so
    per-document statistics are a `np.bincount` away instead of a Python loop."""

    hashes: np.ndarray
    lengths: np.ndarray
    cjk: np.ndarray
    alpha: np.ndarray
    document: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, documents: list[Document]) -> WordBatch:
        words = [words_of(document) for document in documents]
        counts = np.array([len(w) for w in words], dtype=np.int64)
        return cls(
            hashes=np.concatenate([w.hashes for w in words]) if words else np.zeros(0, dtype=np.uint64),
            lengths=np.concatenate([w.lengths for w in words]) if words else np.zeros(0, dtype=np.int64),
            cjk=np.concatenate([w.cjk for w in words]) if words else np.zeros(0, dtype=bool),
            alpha=np.concatenate([w.alpha for w in words]) if words else np.zeros(0, dtype=bool),
            document=np.repeat(np.arange(len(words)), counts),
            counts=counts,
        )

    def per_document(self, values: np.ndarray) -> np.ndarray:
        """Sum of `values` (one per word) for each document."""
        return np.bincount(self.document, weights=values, minlength=len(self.counts))

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(start word index, hash) of every n-gram inside one document; the hash includes the
        document, so equal n-grams of different documents never match."""
        if len(self.hashes) < n:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        grams = ngram_hashes(self.hashes, n)
        starts = np.flatnonzero(self.document[: len(grams)] == self.document[n - 1 :])
        with np.errstate(over="ignore"):
            keys = mix64(grams[starts] ^ (self.document[starts].astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
        return starts, keys


def stable_hash(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process (Python's `hash` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def unit_interval(key: str, seed: int = 0) -> float:
    """A deterministic number in [0, 1) for `key`: how ids pick validation and sampled documents."""
    return stable_hash(f"{seed}:{key}") / float(1 << 64)


def words_of(document: Document) -> Words:
    """The document's words, analysed once and cached until its text changes."""
    cached = document.cache.get("words")
    if cached is None or cached[0] is not document.text:
        cached = (document.text, analyse(document.text))
        document.cache["words"] = cached
    return cached[1]


def with_words(documents: Iterable[Document], batch_size: int = 512) -> Iterator[Document]:
    """Pass documents through, analysing their words a batch at a time (one numpy pass each)."""
    for batch in batched(documents, batch_size):
        yield from _analysed(batch)


def _analysed(batch: list[Document]) -> list[Document]:
    for document, words in zip(batch, analyse_many([document.text for document in batch])):
        document.cache["words"] = (document.text, words)
    return batch
