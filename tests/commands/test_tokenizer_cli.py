"""`lmforge tokenizer train | encode | decode`, run in-process through the real CLI parser."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest

from lmforge.cli import run
from lmforge.commands.tokenizer import _decode_by_documents
from lmforge.data.shards import ShardWriter, build_manifest, dtype_for_vocab, write_manifest
from lmforge.tokenizer import load_tokenizer

ENGLISH = "The tokenizer learns frequent pieces of English words and sentences.\nSecond line of the paragraph."
CHINESE = "语言模型把文本切分成词元，中文文本的压缩率和英文不同。"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "en.txt").write_text("\n\n".join([ENGLISH] * 30), encoding="utf-8")
    with gzip.open(root / "zh.jsonl.gz", "wt", encoding="utf-8") as file:
        for _ in range(30):
            file.write(json.dumps({"content": CHINESE, "id": 1}, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert run(["tokenizer", "train", "--input", str(corpus / "en.txt"), "--vocab-size", "320", "--out", str(out)]) == 0
    return out


def test_train_writes_tokenizer_and_reports_chars_per_token(corpus, tmp_path, capsys):
    code = run([
        "tokenizer", "train", "--input", str(corpus / "en.txt"), "--input", str(corpus / "zh.jsonl.gz"),
        "--text-field", "content", "--vocab-size", "400", "--sample-bytes", "1000000", "--out", str(tmp_path / "tok"),
    ])
    out = capsys.readouterr().out
    assert code == 0
    tokenizer = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    assert 300 < tokenizer.vocab_size <= 400 and tokenizer.eos_id == 0  # a tiny corpus may run out of pairs
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["english"][1] == "30" and rows["chinese"][1] == "30"
    assert float(rows["english"][4]) == pytest.approx(len(ENGLISH) / len(tokenizer.encode(ENGLISH)), rel=1e-2)
    assert float(rows["chinese"][4]) > 1.0


def test_encode_and_decode_round_trip(tokenizer_dir, tmp_path, capsys):
    text = "The sentences<|endoftext|>"
    assert run(["tokenizer", "encode", "--tokenizer", str(tokenizer_dir), "--text", text]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids == load_tokenizer(tokenizer_dir).encode(text) and ids[-1] == 0
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    assert run(["tokenizer", "encode", "--tokenizer", str(tokenizer_dir / "tokenizer.json"), "--file", str(tmp_path / "in.txt")]) == 0
    assert json.loads(capsys.readouterr().out) == ids
    assert run(["tokenizer", "decode", "--tokenizer", str(tokenizer_dir), "--ids", json.dumps(ids)]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_special_tokens_can_be_plain_text(tokenizer_dir, capsys):
    assert run(["tokenizer", "encode", "--tokenizer", str(tokenizer_dir), "--text", "<|endoftext|>", "--allowed-special", "false"]) == 0
    assert 0 not in json.loads(capsys.readouterr().out)


def test_text_that_looks_like_data_stays_text(tokenizer_dir, capsys):
    for text in ("123", "[1, 2]", "true"):
        assert run(["tokenizer", "encode", "--tokenizer", str(tokenizer_dir), "--text", text]) == 0
        assert json.loads(capsys.readouterr().out) == load_tokenizer(tokenizer_dir).encode(text)


DOCUMENTS = ["The sentences of English.", "语言模型把文本切分成词元。", "emoji 🤖🎉 and <|endoftext|> as text", ""]


def write_shards(tokenizer_dir, out):
    """A prepared-data directory as `lmforge prepare` leaves it: shards, manifest, tokenizer.json."""
    tokenizer = load_tokenizer(tokenizer_dir)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    with ShardWriter(out, "train", dtype, eos_id=tokenizer.eos_id) as writer:
        for document in DOCUMENTS:
            writer.add_document(tokenizer.encode(document, allowed_special=False))
    write_manifest(out, build_manifest(dtype=dtype, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                                       splits={"train": writer.close()}))
    tokenizer.save(out)
    return out / "train-00000.bin"


def test_decode_file_of_json_ids(tokenizer_dir, tmp_path, capsys):
    text = "The sentences 语言<|endoftext|>"
    (tmp_path / "ids.json").write_text(json.dumps(load_tokenizer(tokenizer_dir).encode(text)))
    assert run(["tokenizer", "decode", "--tokenizer", str(tokenizer_dir), "--file", str(tmp_path / "ids.json")]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_decode_file_of_a_shard(tokenizer_dir, tmp_path, capsys):
    shard = write_shards(tokenizer_dir, tmp_path / "data")
    assert run(["tokenizer", "decode", "--tokenizer", str(tmp_path / "data"), "--file", str(shard)]) == 0
    assert capsys.readouterr().out == "".join(document + "<|endoftext|>" for document in DOCUMENTS) + "\n"


def test_shard_is_decoded_by_documents_exactly(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = [token for document in DOCUMENTS * 3 for token in tokenizer.encode(document) + [tokenizer.eos_id]]
    array = np.array(ids, dtype=np.uint16)
    for run_tokens in (1, 5, 40, 10_000):
        pieces = list(_decode_by_documents(tokenizer, array, run_tokens))
        assert "".join(pieces) == tokenizer.decode(ids)
        assert len(pieces) > 1 or run_tokens > len(ids)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokenizer", "encode", "--tokenizer", "{tok}", "--file", "{tmp}/absent.txt"], "--file {tmp}/absent.txt does not exist"),
        (["tokenizer", "encode", "--tokenizer", "{tmp}/nothing", "--text", "hi"], "tokenizer {tmp}/nothing does not exist"),
        (["tokenizer", "encode", "--tokenizer", "{tok}"], "give exactly one of --text TEXT or --file FILE"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--ids", "[1, 2"], "--ids must be a JSON list of integers"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--ids", '["a"]'], "--ids must be a JSON list of integers"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--ids", "[99999]"], "token id 99999 is outside"),
        (["tokenizer", "decode", "--tokenizer", "{tok}"], "give exactly one of --ids IDS or --file FILE"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--ids", "[1]", "--file", "{tmp}/ids.json"], "give exactly one of"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{tmp}/absent.json"], "--file {tmp}/absent.json does not exist"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{tmp}/bad.jsonl"], "--file {tmp}/bad.jsonl must be a JSON list"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{tmp}/absent.bin"], "--file {tmp}/absent.bin does not exist"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{tmp}/loose.bin"], "{tmp} has no manifest.json"),
        (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{tmp}/data/odd.bin"], "not a whole number of uint16 ids"),
        (["tokenizer", "decode", "--tokenizer", "{tmp}/gpt2ish.tiktoken", "--file", "{tmp}/data/train-00000.bin"],
         "was prepared with a 320-token vocabulary, but --tokenizer has 257"),
        (["tokenizer", "train", "--input", "{tmp}/absent.txt", "--vocab-size", "300", "--out", "{tmp}/o"], "does not exist"),
        (["tokenizer", "train", "--input", "{tmp}/empty", "--vocab-size", "300", "--out", "{tmp}/o"], "holds no .txt"),
        (["tokenizer", "train", "--input", "{tmp}/bad.jsonl", "--vocab-size", "300", "--out", "{tmp}/o"], "bad.jsonl:1: no string field 'text'"),
        (["tokenizer", "train", "--input", "{tmp}/bad.jsonl", "--text-field", "body", "--vocab-size", "10", "--out", "{tmp}/o"], "vocab size 10 is too small"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tokenizer_dir, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "loose.bin").write_bytes(b"\0\0")
    write_shards(tokenizer_dir, tmp_path / "data")
    (tmp_path / "data" / "odd.bin").write_bytes(b"\0\0\0")
    (tmp_path / "gpt2ish.tiktoken").write_text("".join(f"{base64.b64encode(bytes([byte])).decode()} {byte}\n" for byte in range(256)))
    argv = [part.format(tok=tokenizer_dir, tmp=tmp_path) for part in argv]
    assert run(argv) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("lmforge: error: ")
    assert message.format(tmp=tmp_path) in error
