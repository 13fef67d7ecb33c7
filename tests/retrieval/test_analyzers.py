"""Analyzers on English and Chinese samples; stop words; the stored analyzer is used for queries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.errors import LmforgeError
from lmforge.retrieval import BM25Index
from lmforge.retrieval.analyzers import Analyzer, make_analyzer

ENGLISH = "Hello, World! It's 3.14 — e-mail me at foo_bar@example.com… Ünïcode CAFÉ."
CHINESE = "我爱北京天安门，NLP模型很好用。"


def test_simple_lowercases_and_splits_on_non_letters_or_digits():
    assert make_analyzer("simple")(ENGLISH) == [
        "hello", "world", "it", "s", "3", "14", "e", "mail", "me", "at", "foo", "bar", "example", "com", "ünïcode", "café",
    ]


def test_whitespace_splits_on_whitespace_only_and_drops_punctuation_tokens():
    assert make_analyzer("whitespace")(ENGLISH) == [
        "hello,", "world!", "it's", "3.14", "e-mail", "me", "at", "foo_bar@example.com…", "ünïcode", "café.",
    ]


def test_jieba_segments_chinese_and_keeps_latin_words_whole():
    pytest.importorskip("jieba")
    tokens = make_analyzer("jieba")(CHINESE + " Deep-Learning 2024年")
    assert {"北京", "天安门", "模型", "nlp", "deep", "learning", "2024"} <= set(tokens)
    assert all(token.strip() and token == token.lower() for token in tokens)
    assert "，" not in tokens and "。" not in tokens


def test_cjk_bigram_makes_overlapping_pairs_of_han_runs():
    assert make_analyzer("cjk-bigram")("北京大学 NLP 好，Test") == ["北京", "京大", "大学", "nlp", "好", "test"]


def test_every_analyzer_equals_simple_on_text_without_han():
    simple = make_analyzer("simple")(ENGLISH)
    for name in ["jieba", "cjk-bigram", "auto"]:
        assert make_analyzer(name)(ENGLISH) == simple


def test_auto_resolves_to_a_concrete_analyzer():
    expected = "jieba" if _installed("jieba") else "cjk-bigram"
    assert make_analyzer("auto").name == expected


def test_jieba_is_imported_only_for_han_text():
    code = (
        "import sys; from lmforge.retrieval.analyzers import make_analyzer; "
        "make_analyzer('jieba')('plain english'); print('jieba' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_stop_words_built_in_and_from_a_file(tmp_path):
    assert make_analyzer("simple", "en")("The cat is on the mat") == ["cat", "mat"]
    assert make_analyzer("cjk-bigram", "zh")("的") == []
    words = tmp_path / "stop.txt"
    words.write_text("# my list\nCat\nmat  # trailing comment\n\n", encoding="utf-8")
    assert make_analyzer("simple", str(words))("The cat is on the mat") == ["the", "is", "on", "the"]
    with pytest.raises(LmforgeError, match="neither a built-in list"):
        make_analyzer("simple", str(tmp_path / "missing.txt"))


def test_stemming_applies_to_english_words_only():
    analyzer = make_analyzer("cjk-bigram", "en", stem=True)
    assert analyzer("The connections were connected by connecting 北京 routers 42") == [
        "connect", "connect", "connect", "北京", "router", "42",
    ]


def test_the_index_applies_its_own_analyzer_to_queries(tmp_path):
    index = BM25Index.build(["running shoes", "a pair of shoes", "books about cooking"], stopwords="en", stem=True)
    index.save(tmp_path / "idx")
    loaded = BM25Index.load(tmp_path / "idx")
    assert loaded.analyzer == Analyzer(name=index.analyzer.name, stopwords=index.analyzer.stopwords, stem=True)
    assert [document_id for document_id, _ in loaded.search("RUNS")] == [0]  # lowercased and stemmed
    assert loaded.search("the of about") == []  # stop words only


def test_unknown_analyzer_is_an_error():
    with pytest.raises(LmforgeError, match="--analyzer"):
        make_analyzer("snowball")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
