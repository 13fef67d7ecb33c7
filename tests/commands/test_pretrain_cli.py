"""`lmforge pretrain` checks its prepared data against the manifest before the first step: sizes,
a sampled (or full) hash, and token ids against the model's vocabulary; each problem is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmforge.cli import run
from lmforge.data.shards import DTYPES, ShardWriter, build_manifest, read_manifest, write_manifest

FAST = {"steps": 2, "micro_batch_size": 2, "context_length": 32, "warmup_steps": 1, "eval_every": 0, "eval_batches": 1,
        "sample_tokens": 0, "precision": "fp32", "peak_flops": 1e12, "save_every": 0}


@pytest.fixture
def data(prepared_data, tmp_path) -> Path:
    """A private copy of the prepared data, free to damage."""
    return Path(shutil.copytree(prepared_data, tmp_path / "data"))


def pretrain(data: Path, out: Path, *extra: str) -> int:
    argv = ["pretrain", "--model", "tiny-llama", "--data", str(data), "--out", str(out)]
    return run(argv + [item for key, value in FAST.items() for item in (f"--train.{key}", str(value))] + list(extra))


def error_line(capsys) -> str:
    """The one line the command printed on stderr, checked to be an lmforge error."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge: error:"), lines
    return lines[0]


def train_tokens(data: Path) -> np.ndarray:
    return np.fromfile(data / "train-00000.bin", dtype=DTYPES[read_manifest(data)["dtype"]])


def test_intact_data_trains_with_every_verification(data, tmp_path):
    for mode in ("sample", "full", "off"):
        assert pretrain(data, tmp_path / mode, "--verify", mode) == 0
        assert (tmp_path / mode / "model.safetensors").is_file()


def test_prepare_then_pretrain(tmp_path):
    corpus = tmp_path / "corpus.txt"
    words = "the river valley farmers settled along its banks where seasonal floods left rich soil".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=80)) for _ in range(60)) + "\n", encoding="utf-8")
    assert run(["prepare", "--input", str(corpus), "--out", str(tmp_path / "data"), "--vocab-size", "300"]) == 0
    assert pretrain(tmp_path / "data", tmp_path / "run") == 0


def test_edited_manifest_sha256_is_refused(data, tmp_path, capsys):
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    shard["sha256"] = ("0" if shard["sha256"][0] != "0" else "1") + shard["sha256"][1:]
    path.write_text(json.dumps(manifest, indent=2))
    for verify in ([], ["--verify", "full"]):
        assert pretrain(data, tmp_path / "run", *verify) == 1
        message = error_line(capsys)
        assert "manifest.json" in message and "re-run `lmforge prepare`" in message
        assert not (tmp_path / "run").exists()
    assert pretrain(data, tmp_path / "run", "--verify", "off") == 0  # the bytes themselves are intact


def test_same_size_garbage_is_refused_by_the_sampled_check(data, tmp_path, capsys):
    tokens = train_tokens(data)
    garbage = np.random.default_rng(1).integers(0, 512, size=tokens.size).astype(tokens.dtype)  # valid ids
    garbage.tofile(data / "train-00000.bin")
    assert pretrain(data, tmp_path / "run") == 1
    message = error_line(capsys)
    assert "train-00000.bin" in message and "re-run `lmforge prepare`" in message
    assert not (tmp_path / "run").exists()


def test_truncated_shard_is_a_size_error(data, tmp_path, capsys):
    shard = data / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    assert pretrain(data, tmp_path / "run") == 1
    message = error_line(capsys)
    assert "train-00000.bin is" in message and "bytes but manifest.json says" in message


def test_ids_beyond_the_vocabulary_stop_before_training(data, tmp_path, capsys):
    """Consistent shards and manifest (every hash matches) whose ids do not fit the model: tokenized for another vocabulary."""
    manifest = read_manifest(data)
    tokens = train_tokens(data)
    tokens[tokens == tokens[5]] = 700  # the model's vocabulary has 512 ids
    ends = np.flatnonzero(tokens == manifest["eos_id"])
    with ShardWriter(data, "train", manifest["dtype"], eos_id=manifest["eos_id"]) as writer:
        for start, end in zip(np.concatenate(([0], ends[:-1] + 1)), ends):
            writer.add_document(tokens[start:end])
    splits = {"train": writer.close(), "val": manifest["splits"]["val"]["shards"]}
    write_manifest(data, build_manifest(dtype=manifest["dtype"], vocab_size=512, eos_id=manifest["eos_id"], splits=splits))
    assert pretrain(data, tmp_path / "run") == 1
    message = error_line(capsys)
    assert "train-00000.bin" in message and "token id 700" in message and "vocab_size is 512" in message
    assert not (tmp_path / "run").exists()
