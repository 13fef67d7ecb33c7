"""Reading documents from .txt, .jsonl, .json (and .gz), with ids, and errors that name the line."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.retrieval.corpus import read_documents


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


def test_txt_is_a_document_a_line_with_line_numbers_as_ids(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\n  \nfourth\r\nfifth", encoding="utf-8")
    assert list(read_documents([tmp_path / "a.txt"])) == [(0, "first"), (3, "fourth"), (4, "fifth")]


def test_jsonl_fields_by_name_and_gzip(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as file:
        file.write(json.dumps({"body": "hello", "key": "k1"}) + "\n\n" + json.dumps({"body": "world", "key": 7}) + "\n")
    assert list(read_documents([tmp_path / "a.jsonl.gz"], text_field="body", id_field="key")) == [("k1", "hello"), (7, "world")]
    assert list(read_documents([tmp_path / "a.jsonl.gz"], text_field="body", id_field="")) == [(0, "hello"), (2, "world")]


def test_json_array_of_objects_or_strings(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": "one", "id": "x"}, {"text": "two"}]), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(["three", "four"]), encoding="utf-8")
    assert list(read_documents([tmp_path / "b.json"])) == [(0, "three"), (1, "four")]
    assert list(read_documents([tmp_path / "a.json", tmp_path / "b.json"])) == [
        ("x", "one"), (f"{tmp_path / 'a.json'}:1", "two"), (f"{tmp_path / 'b.json'}:0", "three"), (f"{tmp_path / 'b.json'}:1", "four"),
    ]


def test_directories_and_globs_expand_in_name_order(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("bee\n", encoding="utf-8")
    (tmp_path / "docs" / "a.txt").write_text("ant\n", encoding="utf-8")
    (tmp_path / "docs" / "notes.md").write_text("ignored\n", encoding="utf-8")
    assert [text for _, text in read_documents([tmp_path / "docs"])] == ["ant", "bee"]
    assert [text for _, text in read_documents([str(tmp_path / "docs" / "*.txt")])] == ["ant", "bee"]


@pytest.mark.parametrize(
    "content,options,message",
    [
        ('{"text": "ok"}\n{"body": "no text"}\n', {}, r"a\.jsonl:2: no field 'text' \(fields: 'body'\)"),
        ('{"text": "ok"}\nnot json\n', {}, r"a\.jsonl:2: not valid JSON"),
        ('{"text": 5}\n', {}, "is a int, not a string"),
        ('["a list"]\n', {}, "expected a JSON object"),
        ('{"text": "ok", "id": [1]}\n', {}, "ids must be strings or integers"),
    ],
)
def test_bad_records_name_the_file_line_and_fix(tmp_path, content, options, message):
    (tmp_path / "a.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(LmforgeError, match=message):
        list(read_documents([tmp_path / "a.jsonl"], **options))


def test_missing_unknown_and_non_utf8_inputs(tmp_path):
    with pytest.raises(LmforgeError, match="no such file"):
        list(read_documents([tmp_path / "missing.txt"]))
    (tmp_path / "a.csv").write_text("x", encoding="utf-8")
    with pytest.raises(LmforgeError, match="cannot tell the format"):
        list(read_documents([tmp_path / "a.csv"]))
    (tmp_path / "latin.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(LmforgeError, match=r"latin\.txt:2: not UTF-8"):
        list(read_documents([tmp_path / "latin.txt"]))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(LmforgeError, match="pip install pyarrow"):
        list(read_documents([tmp_path / "a.parquet"]))


def test_parquet_with_pyarrow(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")

    table = pyarrow.table({"text": ["alpha", None, "gamma"], "id": ["a", "b", "c"]})
    parquet.write_table(table, tmp_path / "a.parquet")
    assert list(read_documents([tmp_path / "a.parquet"])) == [("a", "alpha"), ("c", "gamma")]
