"""Language by script: the share of a document's letters written in each script.

Han characters mean Chinese (with kana, Japanese), Hangul Korean, Cyrillic Russian, and Latin
script is reported as `en`: telling English from French needs a trained identifier such as
fastText's, which the stop-word rule partly stands in for. The score is the winning script's
share of all letters, so mixed or symbol-heavy text scores low.
"""

from __future__ import annotations

import functools

import numpy as np

from lmforge.data.document import Document
from lmforge.data.step import FilterStep
from lmforge.data.words import HAN_RANGES, KANA_RANGE, code_points

SCRIPT_RANGES: dict[str, list[tuple[int, int]]] = {
    "zh": HAN_RANGES,
    "ja": [KANA_RANGE],
    "ko": [(0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)],
    "ru": [(0x0400, 0x04FF)],
    "ar": [(0x0600, 0x06FF), (0x0750, 0x077F)],
    "he": [(0x0590, 0x05FF)],
    "el": [(0x0370, 0x03FF)],
    "th": [(0x0E00, 0x0E7F)],
    "hi": [(0x0900, 0x097F)],
    "en": [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F), (0x1E00, 0x1EFF)],
}
LANGUAGES = list(SCRIPT_RANGES)


@functools.cache
def _script_table() -> np.ndarray:
    """Code point -> 1 + index into LANGUAGES, 0 for non-letters and scripts not listed."""
    table = np.zeros(0x110000, dtype=np.uint8)
    for index, ranges in enumerate(SCRIPT_RANGES.values()):
        for first, last in ranges:
            table[first : last + 1] = index + 1
    return table


def detect_language(text: str) -> tuple[str, float]:
    """(language, score): the dominant script's language and its share of the letters."""
    counts = np.bincount(_script_table()[code_points(text)], minlength=len(LANGUAGES) + 1)[1:]
    letters = int(counts.sum())
    if letters == 0:
        return "unknown", 0.0
    han, kana = counts[LANGUAGES.index("zh")], counts[LANGUAGES.index("ja")]
    if kana and kana >= 0.1 * (han + kana):
        return "ja", float(han + kana) / letters  # Japanese mixes kanji with kana
    best = int(np.argmax(counts))
    return LANGUAGES[best], float(counts[best]) / letters


class LanguageStep(FilterStep):
    """Records `language` and `language_score` in each document's meta; with `languages` given,
    drops the others (reason `language`) and those scoring below `min_score` (`language_score`)."""

    name = "language"

    def __init__(self, languages: list[str], min_score: float):
        super().__init__()
        self.languages = set(languages)
        self.min_score = min_score

    def reject(self, document: Document) -> str | None:
        language, score = detect_language(document.text)
        document.meta["language"] = language
        document.meta["language_score"] = round(score, 3)
        if self.languages and language not in self.languages:
            return "language"
        if self.languages and score < self.min_score:
            return "language_score"
        return None
