"""Characters per token by script."""

from __future__ import annotations

from lmforge.tokenizer.compression import chars_per_token, document_script


def test_document_script_by_majority_of_letters():
    assert document_script("Hello, world! 123") == "english"
    assert document_script("你好，世界！Hi") == "chinese"
    assert document_script("ab中文字") == "chinese"
    assert document_script("abc中文") == "english"
    assert document_script("12345 !!!") is None
    assert document_script("ab中文") is None


def test_chars_per_token_rows(trained):
    rows = {row.script: row for row in chars_per_token(trained, ["Hello world", "你好世界", "!!!", "The end."])}
    assert rows["english"].documents == 2 and rows["english"].characters == len("Hello world") + len("The end.")
    assert rows["english"].tokens == len(trained.encode("Hello world")) + len(trained.encode("The end."))
    assert rows["chinese"].chars_per_token == 4 / len(trained.encode("你好世界"))
    empty = chars_per_token(trained, ["123"])
    assert [(row.documents, row.chars_per_token) for row in empty] == [(0, None), (0, None)]
