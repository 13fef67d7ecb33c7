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
    write_manifest,
)
from lmforge.data.verify import SAMPLED_BLOCKS, shard_files, verify_shards
from lmforge.errors import LmforgeError

EOS = 9


def write_dataset(directory, documents: list[list[int]], *, dtype="uint16", shard_tokens=10, vocab_size=100, **writer_options) -> dict:
    with ShardWriter(directory, "train", dtype, eos_id=EOS, shard_tokens=shard_tokens, **writer_options) as writer:
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
    elif how == "max_id":
        del manifest["splits"]["train"]["shards"][0]["max_id"]
    elif how == "blocks":
        manifest["splits"]["train"]["shards"][0]["block_sha256"].append("0" * 64)
    return manifest


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("dtype", r"field dtype must be one of \['uint16', 'uint32'\], got 'int8'"),
        ("eos", r"field eos_id \(100\) must be below vocab_size"),
        ("count", r"field splits.train.tokens \(22\) differs from the sum over its shards"),
        ("path", r"field splits.train.shards\[0\].file must be a plain .bin file name"),
        ("sha", r"field splits.train.shards\[0\].sha256 must be 64 lowercase hex digits"),
        ("max_id", r"field splits.train.shards\[0\].max_id must be a non-negative integer, got None"),
        ("blocks", r"field splits.train.shards\[0\].block_sha256 must be 1 sha256 digests"),
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


def one_shard(directory, tokens: int = 2000, block_bytes: int = 64) -> tuple:
    """One shard of `tokens` ids in blocks of `block_bytes` (many blocks, so sampling leaves some out)."""
    ids = np.random.default_rng(0).integers(10, 100, size=tokens - 1)
    write_dataset(directory, [ids], shard_tokens=tokens, block_bytes=block_bytes)
    return directory / "train-00000.bin", -(-tokens * 2 // block_bytes)


def check(directory, verify="sample", **options):
    return shard_files(directory, read_manifest(directory), "train", verify=verify, **options)


def test_manifest_records_block_digests_max_id_and_its_checksum(tmp_path):
    manifest = write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]], block_bytes=4)
    first, second = manifest["splits"]["train"]["shards"]
    data = (tmp_path / "train-00000.bin").read_bytes()
    assert first["max_id"] == 31 and second["max_id"] == EOS
    assert first["block_bytes"] == 4
    assert first["block_sha256"] == [hashlib.sha256(data[start:start + 4]).hexdigest() for start in range(0, len(data), 4)]
    assert len(data) % 4 != 0 and len(first["block_sha256"]) == -(-len(data) // 4)  # the last block is short
    assert len(manifest["checksum"]) == 64 and read_manifest(tmp_path) == manifest


def test_sampled_check_catches_same_size_garbage(tmp_path):
    shard, blocks = one_shard(tmp_path)
    assert blocks > SAMPLED_BLOCKS and len(check(tmp_path)) == 1
    data = bytearray(shard.read_bytes())
    data[1000:3000] = np.random.default_rng(1).integers(10, 100, size=1000).astype("<u2").tobytes()  # valid ids
    shard.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match=r"train-00000.bin does not match manifest.json \(block \d+ at byte [\d,]+ differs\)"):
        check(tmp_path)
    with pytest.raises(LmforgeError, match="train-00000.bin does not match its sha256 in manifest.json"):
        check(tmp_path, "full")
    assert len(check(tmp_path, "off")) == 1


def test_damage_between_sampled_blocks_needs_the_full_check(tmp_path):
    shard, blocks = one_shard(tmp_path)
    data = bytearray(shard.read_bytes())
    data[64 * 1 + 5] ^= 1  # block 1: between the first sampled block and the next
    shard.write_bytes(bytes(data))
    assert len(check(tmp_path)) == 1
    with pytest.raises(LmforgeError, match="does not match its sha256"):
        check(tmp_path, "full")


def test_edited_manifest_fails_its_checksum(tmp_path):
    write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]])
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["shards"][1]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    for verify in ("sample", "full"):
        with pytest.raises(LmforgeError, match=r"manifest.json was edited after `lmforge prepare` wrote it"):
            check(tmp_path, verify)
    assert len(check(tmp_path, "off")) == 2


def test_ids_are_checked_against_the_vocabulary(tmp_path):
    write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]], vocab_size=100)
    assert len(check(tmp_path, vocab_size=32)) == 2
    for verify in ("sample", "full", "off"):
        with pytest.raises(LmforgeError, match=r"shard \S+train-00000.bin holds token id 31 but the model's vocab_size is 31"):
            check(tmp_path, verify, vocab_size=31)
    write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]], vocab_size=30)
    with pytest.raises(LmforgeError, match=r"train-00000.bin holds token id 31 but manifest.json's vocab_size is 30"):
        check(tmp_path)


def test_manifest_without_digests_is_hashed_in_full(tmp_path):
    """A manifest from before block digests: "sample" cannot sample, so it reads every byte and finds the largest id."""
    manifest = write_dataset(tmp_path, [[1, 2, 3], list(range(20, 32)), [], [4, 5]], vocab_size=30)
    del manifest["checksum"]
    for shard in manifest["splits"]["train"]["shards"]:
        for key in ("max_id", "block_bytes", "block_sha256"):
            del shard[key]
    write_manifest(tmp_path, manifest)
    with pytest.raises(LmforgeError, match="train-00000.bin holds token id 31 but manifest.json's vocab_size is 30"):
        check(tmp_path)
    assert len(check(tmp_path, "off")) == 2  # nothing records the largest id: the loader checks each window
    shard = tmp_path / "train-00000.bin"
    shard.write_bytes(bytes(2) + shard.read_bytes()[2:])
    with pytest.raises(LmforgeError, match="train-00000.bin does not match its sha256"):
        check(tmp_path, vocab_size=32)
