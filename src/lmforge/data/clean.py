"""Text normalisation before any filter: escapes, markup, Unicode forms, user substitutions,
boilerplate lines and whitespace. A document left empty is dropped with reason `empty`."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Iterator

from lmforge.data.document import Document
from lmforge.data.recipe import CleanConfig
from lmforge.data.step import PipelineStep
from lmforge.errors import LmforgeError

ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# C0 and C1 controls except tab and newline, plus zero-width and byte-order marks.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
HTML_BLOCK = re.compile(r"(?is)<(script|style|noscript)\b.*?</\1\s*>|<!--.*?-->")
HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
HTML_BREAK = re.compile(r"(?i)<(?:br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>")
HTML_ENTITY = re.compile(r"&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
SPACES = re.compile(r"[^\S\n]+")
BLANK_LINES = re.compile(r"\n{3,}")


def compile_patterns(patterns: list[str], field: str) -> list[re.Pattern]:
    """Compile the user's regular expressions, naming the recipe field of one that is wrong."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise LmforgeError(f"{field}: {pattern!r} is not a valid regular expression ({error}); fix it in the recipe") from None
    return compiled


def matches_any(patterns: list[re.Pattern], text: str) -> bool:
    return any(pattern.search(text) for pattern in patterns)


class Cleaner:
    """`clean(text)` applies the configured normalisations in a fixed order."""

    def __init__(self, config: CleanConfig):
        self.config = config
        self.substitutions = [
            (pattern, substitution.replacement)
            for pattern, substitution in zip(
                compile_patterns([s.pattern for s in config.substitutions], "clean.substitutions"), config.substitutions
            )
        ]
        self.boilerplate = compile_patterns(config.boilerplate_lines, "clean.boilerplate_lines")

    def clean(self, text: str) -> str:
        config = self.config
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if config.remove_control:
            if "\x1b" in text:
                text = ANSI_ESCAPE.sub("", text)
            text = CONTROL.sub("", text)
        if config.remove_html and ("<" in text or "&" in text):
            text = HTML_BLOCK.sub("", text)
            text = HTML_BREAK.sub("\n", text)
            text = HTML_TAG.sub("", text)
            text = HTML_ENTITY.sub(lambda match: html.unescape(match.group(0)), text)
        if config.nfkc and not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
        for pattern, replacement in self.substitutions:
            text = pattern.sub(replacement, text)
        if matches_any(self.boilerplate, text):
            text = "\n".join(line for line in text.split("\n") if not matches_any(self.boilerplate, line))
        if config.normalize_whitespace:
            text = SPACES.sub(" ", text)
            text = "\n".join(line.strip() for line in text.split("\n"))
            text = BLANK_LINES.sub("\n\n", text).strip()
        return text


class CleanStep(PipelineStep):
    """Characters in are counted before cleaning and characters kept after it, so the report
    shows how much text cleaning removed."""

    name = "clean"

    def __init__(self, config: CleanConfig):
        super().__init__()
        self.cleaner = Cleaner(config)

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.count_in(document)
            cleaned = self.cleaner.clean(document.text)
            if not cleaned.strip():
                self.drop(document, "empty")
                continue
            document.text = cleaned
            document.cache.clear()
            yield self.keep(document)
