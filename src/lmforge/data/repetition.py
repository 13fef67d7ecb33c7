"""Gopher's repetition rules (Rae et al. 2021, table A1): documents that repeat lines,
paragraphs or word n-grams are usually boilerplate, lists or generated spam.

Lines and paragraphs are compared as strings; n-grams through the word hashes of `words.py`
(for Chinese an n-gram is n characters), for a batch of documents at once."""

from __future__ import annotations

import numpy as np

from lmforge.data.document import Document
from lmforge.data.recipe import FilterConfig
from lmforge.data.step import BatchFilterStep
from lmforge.data.words import WordBatch


def duplicate_fractions(parts: list[str]) -> tuple[float, float]:
    """(share of parts that repeat an earlier part, share of characters in those repeats)."""
    seen: set[str] = set()
    duplicates = duplicate_chars = total_chars = 0
    for part in parts:
        total_chars += len(part)
        if part in seen:
            duplicates += 1
            duplicate_chars += len(part)
        else:
            seen.add(part)
    return duplicates / max(len(parts), 1), duplicate_chars / max(total_chars, 1)


def top_ngram_fractions(words: WordBatch, n: int) -> np.ndarray:
    """Per document: share of its words' characters covered by its most frequent n-gram."""
    starts, keys = words.ngrams(n)
    best = np.zeros(len(words.counts))
    if len(keys):
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        repeated = counts > 1
        window_chars = np.convolve(words.lengths, np.ones(n, dtype=np.int64), mode="valid")[starts[first[repeated]]]
        np.maximum.at(best, words.document[starts[first[repeated]]], counts[repeated] * window_chars)
    return best / np.maximum(words.per_document(words.lengths), 1)


def duplicate_ngram_fractions(words: WordBatch, n: int) -> np.ndarray:
    """Per document: share of its words' characters inside n-grams that occurred earlier in it."""
    starts, keys = words.ngrams(n)
    if len(keys) == 0:
        return np.zeros(len(words.counts))
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeat_starts = starts[first[inverse] < np.arange(len(keys))]
    # mark words start..start+n-1 of each repeat: +1 at the start, -1 after the end, running sum
    marks = np.bincount(repeat_starts, minlength=len(words.hashes) + n) - np.bincount(repeat_starts + n, minlength=len(words.hashes) + n)
    covered = np.cumsum(marks)[: len(words.hashes)] > 0
    return words.per_document(words.lengths * covered) / np.maximum(words.per_document(words.lengths), 1)


class RepetitionStep(BatchFilterStep):
    """Duplicate lines and paragraphs (by count and by characters), the most frequent 2-4-gram,
    and repeated 5-10-grams; the reason names the rule and n (`max_duplicate_ngram_chars[5]`)."""

    name = "repetition"

    def __init__(self, config: FilterConfig):
        super().__init__()
        self.config = config

    def reject_batch(self, documents: list[Document]) -> list[str | None]:
        words = WordBatch.of(documents)
        ngram_rules: list[tuple[str, float, np.ndarray]] = []
        for n, limit in sorted(self.config.max_top_ngram_chars.items()):
            ngram_rules.append((f"max_top_ngram_chars[{n}]", limit, top_ngram_fractions(words, int(n))))
        for n, limit in sorted(self.config.max_duplicate_ngram_chars.items()):
            fractions = duplicate_ngram_fractions(words, int(n))
            ngram_rules.append((f"max_duplicate_ngram_chars[{n}]", limit, fractions))
            if not fractions.any():
                break  # a repeated (n+1)-gram contains a repeated n-gram: none now means none later
        reasons = []
        for index, document in enumerate(documents):
            reason = self.reject_lines(document.text)
            if reason is None:
                reason = next((name for name, limit, fractions in ngram_rules if fractions[index] > limit), None)
            reasons.append(reason)
        return reasons

    def reject_lines(self, text: str) -> str | None:
        config = self.config
        lines = [line for line in text.split("\n") if line.strip()]
        line_fraction, line_chars = duplicate_fractions(lines)
        if config.max_duplicate_lines is not None and line_fraction > config.max_duplicate_lines:
            return "max_duplicate_lines"
        if config.max_duplicate_line_chars is not None and line_chars > config.max_duplicate_line_chars:
            return "max_duplicate_line_chars"
        paragraphs = [paragraph for paragraph in text.split("\n\n") if paragraph.strip()]
        paragraph_fraction, paragraph_chars = duplicate_fractions(paragraphs)
        if config.max_duplicate_paragraphs is not None and paragraph_fraction > config.max_duplicate_paragraphs:
            return "max_duplicate_paragraphs"
        if config.max_duplicate_paragraph_chars is not None and paragraph_chars > config.max_duplicate_paragraph_chars:
            return "max_duplicate_paragraph_chars"
        return None
