"""Shard writing, the manifest, and the errors for a damaged prepared-data directory."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lmforge.data.shards import (
    DTYPES,
    FORMAT,
    ShardWriter,
    build_manifest,
    dtype_for_vocab,
    read_manifest,
    verify_shards,
    write_manifest,
)
from lmforge.errors import LmforgeError

EOS = 9


def write_dataset(directory, documents: list[list[int]], *, dtype="uint16", shard_tokens=10, vocab_size=100) -> dict:
    with ShardWriter(directory, "train", dtype, eos_id=EOS, shard_tokens=shard_tokens) as writer:
        for document in documents:
            writer.add_document(document)
    manifest = build_manifest(dtype=dtype, vocab_size=vocab_size, eos_id=EOS, splits={"train": writer.close()})
    write_manifest(directory, manifest)
    return manifest


def test_dtype_for_vocab():
    assert dtype_for_vocab(50257) == np.dtype("<u2")
    assert dtype_for_vocab(65536) == np.dtype("<u2")
    assert dtype_for_vocab(65537) == np.dtype("<u4")
    assert dtype_for_vocab(128256) == np.dtype("<u4")


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_writer_appends_eos_and_rolls_shards_at_document_ends(tmp_path, dtype):
    documents = [[1, 2, 3], list(range(20, 32)), [], [4, 5]]
    manifest = write_dataset(tmp_path, documents, dtype=dtype)
    shards = manifest["splits"]["train"]["shards"]
    assert [(shard["file"], shard["tokens"], shard["documents"]) for shard in shards] == [
        ("train-00000.bin", 4 + 13, 2),  # the second document crosses 10 tokens: the shard ends after it
        ("train-00001.bin", 1 + 3, 2),
    ]
    assert manifest["splits"]["train"]["tokens"] == 21 and manifest["splits"]["train"]["documents"] == 4
    tokens = np.concatenate([np.fromfile(tmp_path / shard["file"], dtype=DTYPES[dtype]) for shard in shards])
    assert tokens.tolist() == [1, 2, 3, EOS, *range(20, 32), EOS, EOS, 4, 5, EOS]
    for shard in shards:
        assert hashlib.sha256((tmp_path / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json", "train-00000.bin", "train-00001.bin"]
    assert read_manifest(tmp_path) == manifest
    assert verify_shards(tmp_path) == 2


def test_large_ids_need_uint32(tmp_path):
    with ShardWriter(tmp_path, "train", "uint16", eos_id=EOS) as writer:
        with pytest.raises(LmforgeError, match="token id 70000 does not fit in uint16"):
            writer.add_document(np.array([1, 70000]))
    with ShardWriter(tmp_path, "val", "uint32", eos_id=EOS) as writer:
        writer.add_document(np.array([1, 70000], dtype=np.int64))
    assert np.fromfile(tmp_path / "val-00000.bin", dtype="<u4").tolist() == [1, 70000, EOS]


def test_error_inside_writer_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "train", "uint16", eos_id=EOS) as writer:
            writer.add_document([1, 2])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_empty_split_has_no_shards(tmp_path):
    writer = ShardWriter(tmp_path, "val", "uint16", eos_id=EOS)
    assert writer.close() == []
    assert build_manifest(dtype="uint16", vocab_size=10, eos_id=EOS, splits={"val": []})["splits"]["val"] == {
        "tokens": 0, "documents": 0, "shards": []
    }


def _damage(manifest: dict, how: str) -> dict:
    if how == "dtype":
        manifest["dtype"] = "int8"
    elif how == "eos":
        manifest["eos_id"] = manifest["vocab_size"]
    elif how == "count":
        manifest["splits"]["train"]["tokens"] += 1
    elif how == "path":
        manifest["splits"]["train"]["shards"][0]["file"] = "../etc/passwd.bin"
    elif how == "sha":
        manifest["splits"]["train"]["shards"][0]["sha256"] = "xyz"
    return manifest


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("dtype", r"field dtype must be one of \['uint16', 'uint32'\], got 'int8'"),
        ("eos", r"field eos_id \(100\) must be below vocab_size"),
        ("count", r"field splits.train.tokens \(22\) differs from the sum over its shards"),
        ("path", r"field splits.train.shards\[0\].file must be a plain .bin file name"),
        ("sha", r"field splits.train.shards\[0\].sha256 must be 64 lowercase hex digits"),
    ],
)
def test_damaged_manifest_fields_are_named(tmp_path, how, message):
    manifest = write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]])
    write_manifest(tmp_path, _damage(manifest, how))
    with pytest.raises(LmforgeError, match=message):
        read_manifest(tmp_path)


def test_missing_foreign_and_corrupt_manifests(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist; create it with `lmforge prepare"):
        read_manifest(tmp_path / "absent")
    with pytest.raises(LmforgeError, match="is not a prepared-data directory"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "lmforge.shards.v1",\n "dtype": ')
    with pytest.raises(LmforgeError, match=r"manifest.json:2: corrupt JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(LmforgeError, match=rf"not an lmforge shard manifest \(format 'something.else', expected '{FORMAT}'\)"):
        read_manifest(tmp_path)


def test_verify_finds_damaged_and_truncated_shards(tmp_path):
    write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]])
    shard = tmp_path / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match="train-00001.bin does not match its sha256"):
        verify_shards(tmp_path)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(LmforgeError, match=r"train-00001.bin is 6 bytes but manifest.json says 4 tokens \(8 bytes\)"):
        verify_shards(tmp_path)
    shard.unlink()
    with pytest.raises(LmforgeError, match="train-00001.bin named in manifest.json is missing"):
        verify_shards(tmp_path)
