"""Token shards and their manifest: the prepared-data directory `prepare` writes and `pretrain` reads.

    data/
      manifest.json       {"format": "lmforge.shards.v1", "dtype": "uint16", "vocab_size": ..., "eos_id": ...,
                           "splits": {"train": {"tokens", "documents", "shards": [{"file", "tokens", "documents", "sha256",
                                                                                  "max_id", "block_bytes", "block_sha256"}]}},
                           "checksum": sha256 of the other fields}
      train-00000.bin     flat little-endian token ids, each document followed by eos

Shards are flat arrays so they can be memory-mapped and sliced with no parsing; the manifest holds
what the bytes cannot say (dtype, vocabulary, counts, the largest id) and digests to catch damage:
a sha256 per shard, one per 1 MiB block (so a check can hash a sample of blocks instead of every
byte), and a checksum of the manifest itself (so an edited field is caught without reading a
shard). Manifests written before block digests have no `max_id`, `block_*` or `checksum`; they are
checked by hashing every byte.
Every file is written under a temporary name and renamed into place, so a crash never leaves a
half-written shard or manifest under its real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError

FORMAT = "lmforge.shards.v1"
MANIFEST_NAME = "manifest.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: large enough for few files, small enough to copy around
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_SHARD_FILE = re.compile(r"^[A-Za-z0-9_.-]+\.bin$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FLUSH_TOKENS = 1 << 20  # buffer this many tokens before a write
BLOCK_BYTES = 1 << 20  # the unit of sampled verification


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32: half the disk and page cache."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return DTYPES["uint16"] if vocab_size <= 1 << 16 else DTYPES["uint32"]


def dtype_name(dtype: np.dtype | str) -> str:
    """The manifest's name for a shard dtype ("uint16" or "uint32")."""
    dtype = np.dtype(dtype)
    for name, known in DTYPES.items():
        if dtype.newbyteorder("<") == known:
            return name
    raise ValueError(f"shards hold uint16 or uint32 token ids, not {dtype}")


class _BlockDigests:
    """sha256 of each `block_bytes` block of a byte stream fed in pieces of any size (the last block may be short)."""

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.digests: list[str] = []
        self._hash = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.block_bytes - self._filled)
            self._hash.update(view[:take])
            self._filled, view = self._filled + take, view[take:]
            if self._filled == self.block_bytes:
                self._end_block()

    def finish(self) -> list[str]:
        if self._filled:
            self._end_block()
        return self.digests

    def _end_block(self) -> None:
        self.digests.append(self._hash.hexdigest())
        self._hash, self._filled = hashlib.sha256(), 0


class ShardWriter:
    """Appends documents to `{split}-00000.bin`, `{split}-00001.bin`, ... in `out_dir`.

    The writer adds `eos_id` after every document, so the rule "eos after each document" lives in
    one place. A shard is closed once it holds `shard_tokens` tokens; documents are never split
    across shards, so per-shard document counts are exact. Use it as a context manager (an error
    inside discards the unfinished shard) or call `close()`, which returns the shard entries for
    the manifest.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        split: str,
        dtype: np.dtype | str,
        *,
        eos_id: int,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        if not _SPLIT_NAME.match(split):
            raise ValueError(f"split name {split!r} must be letters, digits or underscores")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {block_bytes}")
        self.out_dir = Path(out_dir)
        self.split = split
        self.dtype = DTYPES[dtype_name(dtype)]
        self._id_limit = np.iinfo(self.dtype).max
        if not 0 <= eos_id <= self._id_limit:
            raise ValueError(f"eos id {eos_id} does not fit in {dtype_name(self.dtype)}")
        self._eos = np.array([eos_id], dtype=self.dtype)
        self.shard_tokens = shard_tokens
        self.block_bytes = block_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[dict] = []
        self._file = None
        self._temporary: Path | None = None
        self._hash = hashlib.sha256()
        self._blocks = _BlockDigests(block_bytes)
        self._max_id = eos_id
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._tokens = 0
        self._documents = 0
        self._closed = False

    def add_document(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's ids, then eos."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        array = np.asarray(ids)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise TypeError(f"a document is a 1-D sequence of integer ids, got shape {array.shape} dtype {array.dtype}")
        smallest, largest = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if smallest < 0 or largest > self._id_limit:
            bad = largest if largest > self._id_limit else smallest
            raise LmforgeError(
                f"token id {bad} does not fit in {dtype_name(self.dtype)} shards; "
                "choose the dtype with dtype_for_vocab(tokenizer.vocab_size)"
            )
        if self._file is None:
            self._open_shard()
        self._max_id = max(self._max_id, largest)
        self._buffer += [array.astype(self.dtype, copy=False), self._eos]
        self._buffered += array.size + 1
        self._tokens += array.size + 1
        self._documents += 1
        if self._buffered >= _FLUSH_TOKENS:
            self._flush()
        if self._tokens >= self.shard_tokens:
            self._finish_shard()

    def close(self) -> list[dict]:
        """Finish the last shard; returns every shard entry (`file`, `tokens`, `documents`, `sha256`, `max_id`, `block_*`)."""
        if not self._closed:
            if self._file is not None:
                self._finish_shard()
            self._closed = True
        return list(self.shards)

    def abort(self) -> None:
        """Drop the unfinished shard (finished ones stay; the manifest decides what counts)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._temporary.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open_shard(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._temporary = self.out_dir / f".{name}.{os.getpid()}.tmp"
        self._file = open(self._temporary, "wb")
        self._hash = hashlib.sha256()
        self._blocks = _BlockDigests(self.block_bytes)
        self._max_id = int(self._eos[0])
        self._tokens = 0
        self._documents = 0

    def _flush(self) -> None:
        if self._buffer:
            data = np.concatenate(self._buffer).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._blocks.update(data)
            self._buffer, self._buffered = [], 0

    def _finish_shard(self) -> None:
        self._flush()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        name = f"{self.split}-{len(self.shards):05d}.bin"
        os.replace(self._temporary, self.out_dir / name)
        self.shards.append({"file": name, "tokens": self._tokens, "documents": self._documents, "sha256": self._hash.hexdigest(),
                            "max_id": self._max_id, "block_bytes": self.block_bytes, "block_sha256": self._blocks.finish()})


def build_manifest(*, dtype: np.dtype | str, vocab_size: int, eos_id: int, splits: dict[str, list[dict]]) -> dict:
    """A manifest from the shard entries each split's `ShardWriter.close()` returned, with its checksum."""
    manifest = {
        "format": FORMAT,
        "dtype": dtype_name(dtype),
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "splits": {
            split: {
                "tokens": sum(shard["tokens"] for shard in shards),
                "documents": sum(shard["documents"] for shard in shards),
                "shards": shards,
            }
            for split, shards in splits.items()
        },
    }
    return {**manifest, "checksum": manifest_checksum(manifest)}


def manifest_checksum(manifest: dict) -> str:
    """sha256 of every field but `checksum`, as canonical JSON: changes when any field is edited."""
    fields = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write manifest.json atomically; write it last, after every shard it names exists."""
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of a prepared-data directory, checked field by field."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    prepare_hint = f"create it with `lmforge prepare --input PATH --out {data_dir}`"
    if not data_dir.is_dir():
        raise LmforgeError(f"data directory {data_dir} does not exist; {prepare_hint}")
    if not path.is_file():
        raise LmforgeError(f"{data_dir} is not a prepared-data directory (no {MANIFEST_NAME}); {prepare_hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}:{error.lineno}: corrupt JSON ({error.msg}); re-run `lmforge prepare`") from None
    except UnicodeDecodeError:
        raise LmforgeError(f"{path} is not UTF-8 JSON; re-run `lmforge prepare`") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise LmforgeError(f"{path} is not an lmforge shard manifest (format {found!r}, expected {FORMAT!r}); {prepare_hint}")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: dict, path: Path) -> None:
    def fail(field: str, problem: str) -> NoReturn:
        raise LmforgeError(f"{path}: field {field} {problem}; the manifest is damaged, re-run `lmforge prepare`")

    def count(mapping: dict, key: str, field: str) -> int:
        value = mapping.get(key)
        if type(value) is not int or value < 0:
            fail(f"{field}.{key}" if field else key, f"must be a non-negative integer, got {value!r}")
        return value

    if manifest.get("dtype") not in DTYPES:
        fail("dtype", f"must be one of {sorted(DTYPES)}, got {manifest.get('dtype')!r}")
    vocab_size = count(manifest, "vocab_size", "")
    if vocab_size < 1 or vocab_size > np.iinfo(DTYPES[manifest["dtype"]]).max + 1:
        fail("vocab_size", f"({vocab_size}) does not fit dtype {manifest['dtype']}")
    if count(manifest, "eos_id", "") >= vocab_size:
        fail("eos_id", f"({manifest['eos_id']}) must be below vocab_size ({vocab_size})")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        fail("splits", "must be an object of split name -> shards")
    digests = "checksum" in manifest  # written with max_id and block digests; older manifests have none of them
    if digests and not (isinstance(manifest["checksum"], str) and _SHA256.match(manifest["checksum"])):
        fail("checksum", "must be 64 lowercase hex digits")
    itemsize = DTYPES[manifest["dtype"]].itemsize
    for split, entry in splits.items():
        where = f"splits.{split}"
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            fail(f"{where}.shards", "must be a list")
        tokens, documents = count(entry, "tokens", where), count(entry, "documents", where)
        for index, shard in enumerate(entry["shards"]):
            shard_where = f"{where}.shards[{index}]"
            if not isinstance(shard, dict):
                fail(shard_where, "must be an object")
            if not isinstance(shard.get("file"), str) or not _SHARD_FILE.match(shard["file"]):
                fail(f"{shard_where}.file", f"must be a plain .bin file name in the directory, got {shard.get('file')!r}")
            count(shard, "tokens", shard_where)
            count(shard, "documents", shard_where)
            if not isinstance(shard.get("sha256"), str) or not _SHA256.match(shard["sha256"]):
                fail(f"{shard_where}.sha256", "must be 64 lowercase hex digits")
            if digests:
                count(shard, "max_id", shard_where)
                if count(shard, "block_bytes", shard_where) == 0:
                    fail(f"{shard_where}.block_bytes", "must be positive")
                blocks = -(-shard["tokens"] * itemsize // shard["block_bytes"])
                found = shard.get("block_sha256")
                if not isinstance(found, list) or len(found) != blocks or not all(
                    isinstance(digest, str) and _SHA256.match(digest) for digest in found
                ):
                    fail(f"{shard_where}.block_sha256", f"must be {blocks} sha256 digests (one per block of the shard)")
        if sum(shard["tokens"] for shard in entry["shards"]) != tokens:
            fail(f"{where}.tokens", f"({tokens}) differs from the sum over its shards")
        if sum(shard["documents"] for shard in entry["shards"]) != documents:
            fail(f"{where}.documents", f"({documents}) differs from the sum over its shards")
