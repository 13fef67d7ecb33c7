import gzip
import json

import pytest

from lmforge.data.inputs import expand, parse_input, resolve_sources
from lmforge.data.readers import ReadStep, extract_text, parse_field, read_paths, split_file
from lmforge.data.recipe import ReadConfig, Source
from lmforge.errors import LmforgeError


def read(paths, **options):
    on_bad_line = options.pop("on_bad_line", "error")
    return list(read_paths([str(path) for path in paths], ReadConfig(**options), "src", on_bad_line))


def test_txt_units(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n\n\nthird\n", encoding="utf-8")
    assert [d.text for d in read([path], unit="file")] == ["first line\nsecond line\n\n\nthird\n"]
    paragraphs = read([path], unit="paragraph")
    assert [(d.id, d.text) for d in paragraphs] == [("src/a.txt:1", "first line\nsecond line"), ("src/a.txt:5", "third")]
    assert [d.id for d in read([path], unit="line")] == ["src/a.txt:1", "src/a.txt:2", "src/a.txt:5"]


def test_jsonl_field_paths_and_ids(tmp_path):
    path = tmp_path / "chat.jsonl"
    records = [
        {"id": "x1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"id": "x2", "messages": [{"content": "only"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    documents = read([path], text_field="messages[].content", id_field="id")
    assert [(d.id, d.text) for d in documents] == [("src/x1", "hi\nhello"), ("src/x2", "only")]
    assert parse_field("a.b[][].c") == [("a", 0), ("b", 2), ("c", 0)]
    assert extract_text({"a": {"b": [["x", "y"], ["z"]]}}, parse_field("a.b[][]")) == "x\ny\nz"


def test_json_array_and_object(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    (tmp_path / "dict.json").write_text(json.dumps({"k1": {"text": "three"}}), encoding="utf-8")
    assert [d.text for d in read([tmp_path / "list.json"])] == ["one", "two"]
    assert [(d.id, d.text) for d in read([tmp_path / "dict.json"])] == [("src/dict.json:k1", "three")]


def test_compressed_files(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as file:
        file.write(json.dumps({"text": "gzip text"}) + "\n")
    assert [d.text for d in read([tmp_path / "a.jsonl.gz"])] == ["gzip text"]
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("zstd line\n".encode()))
    assert [d.text for d in read([tmp_path / "b.txt.zst"], unit="line")] == ["zstd line"]


def test_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    parquet.write_table(pyarrow.table({"body": ["p one", "p two"]}), tmp_path / "t.parquet")
    assert [(d.id, d.text) for d in read([tmp_path / "t.parquet"], text_field="body")] == [
        ("src/t.parquet:1", "p one"),
        ("src/t.parquet:2", "p two"),
    ]
    with pytest.raises(LmforgeError, match="no column 'text'"):
        read([tmp_path / "t.parquet"])


def test_directories_globs_and_names(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("b", encoding="utf-8")
    (tmp_path / "d" / "sub" / "a.txt").write_text("a", encoding="utf-8")
    (tmp_path / "d" / "skip.csv").write_text("x", encoding="utf-8")
    assert [f.relative for f in expand(str(tmp_path / "d"), "s")] == ["b.txt", "sub/a.txt"]
    assert [f.relative for f in expand(str(tmp_path / "d" / "**" / "*.txt"), "s")] == ["b.txt", "sub/a.txt"]
    assert parse_input("news=corpus/*.txt") == ("news", "corpus/*.txt")
    assert parse_input("plain/path.txt") == (None, "plain/path.txt")
    sources = resolve_sources(["news=a.txt", str(tmp_path / "d"), "news=b.txt"], [Source("web", ["w.txt"], weight=1.0)])
    assert [(s.name, s.paths) for s in sources] == [("web", ["w.txt"]), ("news", ["a.txt", "b.txt"]), ("d", [str(tmp_path / "d")])]
    with pytest.raises(LmforgeError, match="no such file"):
        expand(str(tmp_path / "missing.txt"), "s")
    with pytest.raises(LmforgeError, match="matches no"):
        expand(str(tmp_path / "*.jsonl"), "s")


def test_pieces_cover_a_file_exactly(tmp_path):
    path = tmp_path / "big.txt"
    paragraphs = [f"paragraph {index}\nsecond line {index}" for index in range(300)]
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    input_file = expand(str(path), "src")[0]
    for unit in ("line", "paragraph"):
        config = ReadConfig(unit=unit)
        pieces = split_file(input_file, config, piece_bytes=1000)
        assert len(pieces) > 5
        whole = [(d.id, d.text) for d in ReadStep().run(split_file(input_file, config, piece_bytes=1 << 30))]
        assert [(d.id, d.text) for d in ReadStep().run(pieces)] == whole


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n{"other": 1}\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"bad\.jsonl line 2: not valid JSON"):
        read([path])
    step = ReadStep("skip")
    config = ReadConfig()
    from lmforge.data.readers import Piece

    documents = list(step.run([Piece(expand(str(path), "src")[0], config)]))
    assert [d.text for d in documents] == ["ok"]
    assert step.stats.dropped == {"bad_json": {"documents": 1, "characters": 15}, "missing_field": {"documents": 1, "characters": 12}}


def test_bad_encoding_names_the_fix(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("中文\n".encode("gb18030"))
    with pytest.raises(LmforgeError, match=r"gbk\.txt line 1: not valid utf-8.*--read.encoding"):
        read([path], unit="line")
    assert [d.text for d in read([path], unit="line", encoding="gb18030")] == ["中文"]
