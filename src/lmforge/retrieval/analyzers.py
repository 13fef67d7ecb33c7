"""Text analysis for BM25: how a document or a query becomes a list of terms.

Analyzers (`--analyzer`):
- `simple`: lowercase, split on anything that is not a letter or digit.
- `whitespace`: lowercase, split on whitespace only (keeps "e-mail" and "c++" whole).
- `jieba`: Chinese words from `jieba.lcut` (its default, accurate mode) for each run of Han
  characters; everything else as in `simple`, so Latin words stay whole and lowercase.
- `cjk-bigram`: as `jieba`, but a run of Han characters becomes its overlapping character bigrams
  (a lone character stays a unigram): no dictionary, no extra package, robust to new words.
- `auto` (the default): `jieba` when the jieba package is installed, else `cjk-bigram`. On text
  without Han characters all three equal `simple`, so English needs no choice.

Every analyzer drops tokens holding no letter or digit. Then stop words are removed (`--stopwords`,
see `stopwords.py`) and, with `--stem`, English words are Porter-stemmed (see `stemmer.py`). The
resolved analyzer is stored in the index and applied to queries, so both sides always agree.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import re
from collections.abc import Callable

from lmforge.errors import LmforgeError
from lmforge.retrieval.stemmer import porter_stem
from lmforge.retrieval.stopwords import load_stopwords

# Han ideographs: extension A, the main block, compatibility ideographs, and planes 2 and 3
# (extensions B and later).
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
WORD = re.compile(r"[^\W_]+")  # a run of letters and digits, in any script
HAS_WORD = re.compile(r"[^\W_]")
SPACED_WORD = re.compile(r"\S*[^\W_]\S*")  # a run of non-spaces holding a letter or digit
HAN_OR_OTHER_WORD = re.compile(rf"[{HAN}]+|[^\W_{HAN}]+")
HAN_RUN = re.compile(rf"[{HAN}]")

NAMES = ("auto", "simple", "whitespace", "jieba", "cjk-bigram")


def _simple(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _whitespace(text: str) -> list[str]:
    return SPACED_WORD.findall(text.lower())


@functools.cache
def _jieba_cut() -> Callable[[str], list[str]]:
    """jieba.lcut, imported on first use: importing jieba and loading its dictionary takes a second."""
    try:
        import jieba
    except ImportError:
        raise LmforgeError("the jieba analyzer needs the jieba package: pip install jieba "
                           "(or index with --analyzer cjk-bigram, which needs nothing)") from None
    jieba.setLogLevel(logging.WARNING)  # keep "Building prefix dict ..." off the user's terminal
    return jieba.lcut


def _bigrams(run: str) -> list[str]:
    return [run] if len(run) == 1 else [run[index : index + 2] for index in range(len(run) - 1)]


def _segment_han(text: str, segment: Callable[[str], list[str]]) -> list[str]:
    """Letter-or-digit runs as in `simple`, each run of Han characters cut by `segment`."""
    tokens: list[str] = []
    for run in HAN_OR_OTHER_WORD.findall(text.lower()):
        if HAN_RUN.match(run):
            tokens.extend(token for token in segment(run) if HAS_WORD.search(token))
        else:
            tokens.append(run)
    return tokens


def _jieba(text: str) -> list[str]:
    return _segment_han(text, lambda run: _jieba_cut()(run))


def _cjk_bigram(text: str) -> list[str]:
    return _segment_han(text, _bigrams)


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "simple": _simple,
    "whitespace": _whitespace,
    "jieba": _jieba,
    "cjk-bigram": _cjk_bigram,
}


@dataclasses.dataclass(frozen=True)
class Analyzer:
    """A concrete analyzer (never `auto`): a tokenizer, stop words to drop, and whether to stem."""

    name: str = "simple"
    stopwords: frozenset[str] = frozenset()
    stem: bool = False

    def __post_init__(self) -> None:
        if self.name not in TOKENIZERS:
            raise LmforgeError(f"unknown analyzer {self.name!r}; choose one of {', '.join(NAMES)}")

    def __call__(self, text: str) -> list[str]:
        tokens = TOKENIZERS[self.name](text)
        if self.stopwords:
            tokens = [token for token in tokens if token not in self.stopwords]
        if self.stem:
            tokens = [porter_stem(token) for token in tokens]
        return tokens

    def to_json(self) -> dict:
        return {"name": self.name, "stopwords": sorted(self.stopwords), "stem": self.stem}

    @classmethod
    def from_json(cls, data: dict) -> Analyzer:
        return cls(name=data["name"], stopwords=frozenset(data["stopwords"]), stem=bool(data["stem"]))


def make_analyzer(name: str = "auto", stopwords: str = "none", stem: bool = False) -> Analyzer:
    """The analyzer for the `--analyzer`, `--stopwords` and `--stem` options, `auto` resolved."""
    if name not in NAMES:
        raise LmforgeError(f"--analyzer {name!r} is not one of {', '.join(NAMES)}")
    if name == "auto":
        name = "jieba" if importlib.util.find_spec("jieba") is not None else "cjk-bigram"
    return Analyzer(name=name, stopwords=load_stopwords(stopwords), stem=stem)
