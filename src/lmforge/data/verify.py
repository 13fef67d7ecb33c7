"""Checking a prepared-data directory against its manifest before its shards are read.

Sizes are always checked: a truncated or padded shard would shift every window after it. Hashing
is the cost to choose: "sample" reads SAMPLED_BLOCKS blocks of each shard (8 MiB of a 200 MB
shard) and compares them with the block digests `prepare` recorded, so a shard overwritten, or
swapped for another run's, is caught in milliseconds, and the manifest's checksum catches an
edited field; "full" reads every byte, which also catches damage confined to unsampled blocks.
The largest id of each shard (recorded at prepare, or found while hashing in full) is compared
with the model's vocabulary, so an id without an embedding row is an error before the first step
(and `TokenWindows` checks every window it reads, for damage a sample or "off" let through).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from lmforge.data.shards import DTYPES, MANIFEST_NAME, manifest_checksum, read_manifest
from lmforge.errors import LmforgeError

VERIFY_MODES = ("sample", "full", "off")
SAMPLED_BLOCKS = 8  # blocks hashed per shard by "sample": the first, the last and six evenly between
_READ_BYTES = 8 << 20  # read this much at a time when hashing a whole shard


def shard_files(
    data_dir: str | os.PathLike, manifest: dict, split: str, *, verify: str = "sample", vocab_size: int | None = None
) -> list[tuple[Path, int]]:
    """(path, tokens) of each shard of `split`, checked as `verify` says (see the module docstring):
    sizes in every mode; then the manifest's checksum and sampled blocks ("sample", or every byte
    when the manifest predates block digests) or every byte ("full"); and the largest id against
    `vocab_size` (the model's; default the manifest's).
    """
    data_dir = Path(data_dir)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if split not in manifest["splits"]:
        present = ", ".join(manifest["splits"]) or "none"
        raise LmforgeError(f"{data_dir} has no {split!r} split (it has: {present}); prepare one or choose another split")
    if verify != "off" and "checksum" in manifest and manifest["checksum"] != manifest_checksum(manifest):
        raise LmforgeError(
            f"{data_dir / MANIFEST_NAME} was edited after `lmforge prepare` wrote it (its checksum does not match its fields); "
            "re-run `lmforge prepare`"
        )
    whole = verify == "full" or (verify == "sample" and "checksum" not in manifest)
    dtype = DTYPES[manifest["dtype"]]
    limit = manifest["vocab_size"] if vocab_size is None else vocab_size
    files = []
    for shard in manifest["splits"][split]["shards"]:
        path = data_dir / shard["file"]
        if not path.is_file():
            raise LmforgeError(
                f"shard {path} named in {MANIFEST_NAME} is missing; copy the whole directory or re-run `lmforge prepare`"
            )
        expected = shard["tokens"] * dtype.itemsize
        if path.stat().st_size != expected:
            raise LmforgeError(
                f"shard {path} is {path.stat().st_size:,} bytes but {MANIFEST_NAME} says {shard['tokens']:,} tokens "
                f"({expected:,} bytes); it is truncated or from another run, re-run `lmforge prepare`"
            )
        if whole:
            largest = _check_whole_shard(path, shard, dtype)
        else:
            if verify == "sample":
                _check_sampled_blocks(path, shard)
            largest = shard.get("max_id")
        if largest is not None and largest >= limit:
            raise vocabulary_error(path, largest, limit, model=vocab_size is not None)
        files.append((path, shard["tokens"]))
    return files


def vocabulary_error(path: Path, token_id: int, vocab_size: int, *, model: bool, position: int | None = None) -> LmforgeError:
    """The error for an id the vocabulary (the model's, or else the manifest's) has no row for."""
    where = "" if position is None else f" at token {position:,}"
    whose = "the model's" if model else f"{MANIFEST_NAME}'s"
    return LmforgeError(
        f"shard {path} holds token id {token_id}{where} but {whose} vocab_size is {vocab_size}; the data was tokenized "
        "for another vocabulary or is damaged, re-run `lmforge prepare` with the model's tokenizer"
    )


def _sampled_blocks(blocks: int) -> list[int]:
    """SAMPLED_BLOCKS block indices, first and last included, evenly spread: the same ones every time."""
    if blocks <= SAMPLED_BLOCKS:
        return list(range(blocks))
    return sorted({round(index * (blocks - 1) / (SAMPLED_BLOCKS - 1)) for index in range(SAMPLED_BLOCKS)})


def _check_sampled_blocks(path: Path, shard: dict) -> None:
    block_bytes = shard["block_bytes"]
    with open(path, "rb") as file:
        for index in _sampled_blocks(len(shard["block_sha256"])):
            file.seek(index * block_bytes)
            if hashlib.sha256(file.read(block_bytes)).hexdigest() != shard["block_sha256"][index]:
                raise LmforgeError(
                    f"shard {path} does not match {MANIFEST_NAME} (block {index} at byte {index * block_bytes:,} differs); "
                    "the file is damaged or from another run, re-run `lmforge prepare`"
                )


def _check_whole_shard(path: Path, shard: dict, dtype: np.dtype) -> int | None:
    """Hash every byte against the manifest's sha256; returns the largest id (None for an empty shard)."""
    digest, largest = hashlib.sha256(), None
    buffer = memoryview(bytearray(_READ_BYTES))
    with open(path, "rb") as file:
        while read := file.readinto(buffer):
            digest.update(buffer[:read])
            chunk_max = int(np.frombuffer(buffer[:read], dtype=dtype).max())
            largest = chunk_max if largest is None else max(largest, chunk_max)
    if digest.hexdigest() != shard["sha256"]:
        raise LmforgeError(
            f"shard {path} does not match its sha256 in {MANIFEST_NAME}; the file is damaged, re-run `lmforge prepare`"
        )
    return largest


def verify_shards(data_dir: str | os.PathLike, verify: str = "full") -> int:
    """Check every shard of every split against the manifest (see `shard_files`); returns the number checked."""
    manifest = read_manifest(data_dir)
    return sum(len(shard_files(data_dir, manifest, split, verify=verify)) for split in manifest["splits"])
