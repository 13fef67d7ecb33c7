"""Characters per token, by language: how well a vocabulary compresses English and Chinese text.

More characters per token means shorter sequences, so more text per context window and per unit
of compute. A document counts as English or Chinese by the share of its letters that are Latin or
Han; documents mixing both without a majority, or with no letters, are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lmforge.tokenizer.tokenizer import Tokenizer

_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]")
SCRIPTS = {"english": _LATIN, "chinese": _HAN}


@dataclass(frozen=True)
class ScriptCompression:
    """One row of the report: the documents of one script and how many tokens they took."""

    script: str
    documents: int
    characters: int
    tokens: int

    @property
    def chars_per_token(self) -> float | None:
        return self.characters / self.tokens if self.tokens else None


def document_script(text: str) -> str | None:
    """"english" or "chinese" when more than half of the document's letters are of that script."""
    counts = {script: len(pattern.findall(text)) for script, pattern in SCRIPTS.items()}
    letters = sum(counts.values())
    return next((script for script, count in counts.items() if count * 2 > letters), None)


def chars_per_token(tokenizer: Tokenizer, documents: Iterable[str]) -> list[ScriptCompression]:
    """One row per script in `SCRIPTS` (zero documents when the text has none of that script)."""
    by_script: dict[str, list[str]] = {script: [] for script in SCRIPTS}
    for document in documents:
        script = document_script(document)
        if script is not None:
            by_script[script].append(document)
    rows = []
    for script, texts in by_script.items():
        tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts, allowed_special=False)) if texts else 0
        rows.append(ScriptCompression(script, len(texts), sum(len(text) for text in texts), tokens))
    return rows
