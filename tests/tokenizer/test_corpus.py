"""Reading the training sample: paragraphs, JSONL fields, gzip, globs, the byte budget, and errors."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.tokenizer.corpus import find_input_files, read_documents, sample_documents, text_size


def test_txt_documents_are_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\n    indented\n\n\n\nsecond\r\n   \nthird", encoding="utf-8")
    assert list(read_documents(path)) == ["first line\n    indented", "second", "third"]


def test_jsonl_text_field_and_gzip(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write(json.dumps({"content": "中文\n段落"}) + "\n\n" + json.dumps({"content": "two"}) + "\n")
    assert list(read_documents(path, text_field="content")) == ["中文\n段落", "two"]
    assert text_size(path) == len((json.dumps({"content": "中文\n段落"}) + "\n\n" + json.dumps({"content": "two"}) + "\n").encode())


def test_inputs_expand_directories_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.txt.gz", "skip.csv"):
        (tmp_path / name).write_bytes(b"")
    assert [path.name for path in find_input_files([str(tmp_path)])] == ["a.jsonl", "b.txt", "c.txt.gz"]
    assert [path.name for path in find_input_files([str(tmp_path / "*.txt"), str(tmp_path / "b.txt")])] == ["b.txt"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: str(root / "absent.txt"), "does not exist"),
        (lambda root: str(root / "*.nothing"), "matches no"),
        (lambda root: _write(root / "data.csv", b"a,b"), "unsupported input type"),
    ],
)
def test_bad_inputs(tmp_path, setup, message):
    with pytest.raises(LmforgeError, match=message):
        find_input_files([setup(tmp_path)])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "ok"}\n{"text": \n', r"a.jsonl:2: invalid JSON"),
        (b'{"text": "ok"}\n{"body": "x"}\n', r"a.jsonl:2: no string field 'text' \(fields: body\); name the text field with --text-field"),
        (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', r"a.jsonl:2: not UTF-8 text"),
    ],
)
def test_bad_records_name_the_line(tmp_path, content, message):
    path = _write(tmp_path / "a.jsonl", content)
    with pytest.raises(LmforgeError, match=message):
        list(read_documents(path))


def test_budget_is_shared_by_file_size(tmp_path):
    big = tmp_path / "big.txt"
    small = tmp_path / "small.txt"
    big.write_text("\n\n".join(["e" * 99] * 1000), encoding="utf-8")  # ~100 kB
    small.write_text("\n\n".join(["z" * 99] * 100), encoding="utf-8")  # ~10 kB
    documents = sample_documents([str(big), str(small)], sample_bytes=11_000)
    counts = {letter: sum(document[0] == letter for document in documents) for letter in "ez"}
    assert 100 <= counts["e"] <= 103 and 10 <= counts["z"] <= 11  # ~10,000 and ~1,000 bytes: shares by size
    assert len(sample_documents([str(tmp_path)], sample_bytes=10**9)) == 1100


def _write(path, content: bytes):
    path.write_bytes(content)
    return str(path) if path.suffix == ".csv" else path
