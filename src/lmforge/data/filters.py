"""Coarse, rule-based filters: Gopher's quality rules (Rae et al. 2021, appendix A.1.1) and
content rules (banned words, advertising). Each drop's reason is the name of the recipe field whose
threshold failed, so the report says which knob to turn."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from lmforge.data.clean import compile_patterns, matches_any
from lmforge.data.document import Document
from lmforge.data.language import detect_language
from lmforge.data.recipe import FilterConfig
from lmforge.data.step import BatchFilterStep, FilterStep
from lmforge.data.words import WordBatch, hash_words
from lmforge.errors import LmforgeError

# Gopher's English stop words; for Chinese, the commonest function characters (one word each).
STOP_WORDS = {
    "en": "the be to of and that have with",
    "zh": "的 了 是 在 和 有 不 这 也 就 都 我 他 们 一 个 上 中 为 与 对 以",
}
@dataclasses.dataclass
class DocumentWords:
    """What the quality rules need to know about one document's words."""

    count: int
    spaced: int
    """Words that are not single CJK characters."""
    spaced_mean_length: float
    alpha_fraction: float
    stop_words: dict[str, int]


BULLETS = ("•", "●", "○", "▪", "■", "□", "►", "‣", "·", "-", "*", "–", "—")
ELLIPSES = ("...", "…")


class GopherQualityStep(BatchFilterStep):
    """Length, word shape, symbols, bullets and ellipses, letters, and stop words."""

    name = "quality_rules"

    def __init__(self, config: FilterConfig):
        super().__init__()
        self.config = config
        self.stop_words = {language: np.array(sorted(hash_words(words)), dtype=np.uint64) for language, words in STOP_WORDS.items()}

    def reject_batch(self, documents: list[Document]) -> list[str | None]:
        words = WordBatch.of(documents)
        spaced = words.per_document(~words.cjk)
        spaced_mean_length = words.per_document(words.lengths * ~words.cjk) / np.maximum(spaced, 1)
        alpha = words.per_document(words.alpha) / np.maximum(words.counts, 1)
        stop_words = {language: words.per_document(np.isin(words.hashes, hashes)) for language, hashes in self.stop_words.items()}
        reasons = []
        for index, document in enumerate(documents):
            statistics = DocumentWords(
                count=int(words.counts[index]),
                spaced=int(spaced[index]),
                spaced_mean_length=float(spaced_mean_length[index]),
                alpha_fraction=float(alpha[index]),
                stop_words={language: int(counts[index]) for language, counts in stop_words.items()},
            )
            reasons.append(self.reject(document, statistics))
        return reasons

    def reject(self, document: Document, words: DocumentWords) -> str | None:
        config, text = self.config, document.text
        if config.min_chars is not None and len(text) < config.min_chars:
            return "min_chars"
        if config.max_chars is not None and len(text) > config.max_chars:
            return "max_chars"
        if config.min_words is not None and words.count < config.min_words:
            return "min_words"
        if config.max_words is not None and words.count > config.max_words:
            return "max_words"
        if words.count == 0:
            return "min_words"
        if words.spaced * 2 > words.count:
            if config.min_mean_word_length is not None and words.spaced_mean_length < config.min_mean_word_length:
                return "min_mean_word_length"
            if config.max_mean_word_length is not None and words.spaced_mean_length > config.max_mean_word_length:
                return "max_mean_word_length"
        if config.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / words.count > config.max_symbol_word_ratio:
                return "max_symbol_word_ratio"
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if config.max_bullet_lines is not None and lines:
            if sum(line.startswith(BULLETS) for line in lines) / len(lines) > config.max_bullet_lines:
                return "max_bullet_lines"
        if config.max_ellipsis_lines is not None and lines:
            if sum(line.endswith(ELLIPSES) for line in lines) / len(lines) > config.max_ellipsis_lines:
                return "max_ellipsis_lines"
        if config.min_alpha_words is not None and words.alpha_fraction < config.min_alpha_words:
            return "min_alpha_words"
        if config.min_stop_words is not None:
            language = document.meta.get("language") or detect_language(text)[0]
            if language in words.stop_words and words.stop_words[language] < config.min_stop_words:
                return "min_stop_words"
        return None


def banned_word_pattern(words: list[str]) -> re.Pattern | None:
    """One regular expression for all banned words: whole words for Latin script (so `ass` does not
    ban `class`), plain substrings for scripts written without spaces."""
    alternatives = []
    for word in sorted({word.strip() for word in words if word.strip()}, key=len, reverse=True):
        escaped = re.escape(word)
        alternatives.append(rf"\b{escaped}\b" if word.isascii() else escaped)
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


class ContentStep(FilterStep):
    """Banned words (reason `banned_words`) and advertising lines (reason `max_ad_lines`)."""

    name = "content"

    def __init__(self, config: FilterConfig):
        super().__init__()
        words = list(config.banned_words)
        if config.banned_words_file:
            path = Path(config.banned_words_file)
            if not path.is_file():
                raise LmforgeError(f"filters.banned_words_file: {path} does not exist; give a file with one word per line")
            words += path.read_text(encoding="utf-8").splitlines()
        self.banned = banned_word_pattern(words)
        self.ads = compile_patterns(config.ad_patterns, "filters.ad_patterns")
        self.max_ad_lines = config.max_ad_lines

    def reject(self, document: Document) -> str | None:
        text = document.text
        if self.banned is not None and self.banned.search(text):
            return "banned_words"
        if self.max_ad_lines is not None and matches_any(self.ads, text):
            lines = [line for line in text.split("\n") if line.strip()]
            if sum(matches_any(self.ads, line) for line in lines) / len(lines) > self.max_ad_lines:
                return "max_ad_lines"
        return None
