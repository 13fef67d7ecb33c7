"""The text a tokenizer is trained on: documents from .txt / .jsonl files (gzip or not), sampled
evenly across the inputs up to a byte budget.

A .txt document is a paragraph (lines up to a blank line), so newlines and indentation inside it
are learned as tokens; a .jsonl document is one record's text field. Each file gives a share of
the budget proportional to its uncompressed size, so a small Chinese file next to a large English
one still shapes the vocabulary.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lmforge.compressed import open_compressed
from lmforge.errors import LmforgeError

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


def _has_supported_suffix(path: Path) -> bool:
    return path.name.endswith(SUFFIXES)


def find_input_files(inputs: list[str]) -> list[Path]:
    """Every text file named by `inputs` (files, directories searched recursively, glob patterns)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(child for child in path.rglob("*") if child.is_file() and _has_supported_suffix(child))
            if not found:
                raise LmforgeError(f"directory {path} holds no {', '.join(SUFFIXES)} files")
        elif path.is_file():
            if not _has_supported_suffix(path):
                raise LmforgeError(f"{path}: unsupported input type; give {', '.join(SUFFIXES)} files")
            found = [path]
        elif glob.has_magic(item):
            found = sorted(Path(match) for match in glob.glob(item, recursive=True) if _has_supported_suffix(Path(match)))
            if not found:
                raise LmforgeError(f"pattern {item!r} matches no {', '.join(SUFFIXES)} files")
        else:
            raise LmforgeError(f"input {path} does not exist")
        files.extend(found)
    return list(dict.fromkeys(files))


def text_size(path: Path) -> int:
    """Uncompressed size in bytes; for gzip, from the trailer (exact below 4 GiB, modulo it above)."""
    if not path.name.endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs; bytes are decoded line by line so a bad byte is reported where it is."""
    with open_compressed(path) as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LmforgeError(
                    f"{path}:{line_number}: not UTF-8 text; convert the file first (e.g. `iconv -f GBK -t UTF-8`)"
                ) from None


def read_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one input file, in order."""
    if ".jsonl" in path.name:
        for line_number, line in _lines(path):
            if line.strip():
                yield _text_of_record(line, path, line_number, text_field)
        return
    paragraph: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).rstrip("\r\n")
            paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\r\n")


def _text_of_record(line: str, path: Path, line_number: int, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}:{line_number}: invalid JSON ({error.msg}); each line must be one JSON object") from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        fields = ", ".join(record) if isinstance(record, dict) else "none"
        raise LmforgeError(
            f"{path}:{line_number}: no string field {text_field!r} (fields: {fields}); name the text field with --text-field"
        )
    return text


def sample_documents(inputs: list[str], *, sample_bytes: int, text_field: str = "text") -> list[str]:
    """Documents from the start of each input file, each file taking its share of `sample_bytes`."""
    if sample_bytes <= 0:
        raise LmforgeError(f"sample size must be positive, got {sample_bytes} bytes")
    files = find_input_files(inputs)
    sizes = [text_size(path) for path in files]
    total = sum(sizes)
    documents: list[str] = []
    for path, size in zip(files, sizes):
        budget = size if total <= sample_bytes else sample_bytes * size / total
        taken = 0
        for document in read_documents(path, text_field):
            documents.append(document)
            taken += len(document.encode("utf-8"))
            if taken >= budget:
                break
    if not documents:
        raise LmforgeError(f"the inputs ({', '.join(inputs)}) hold no text")
    return documents
