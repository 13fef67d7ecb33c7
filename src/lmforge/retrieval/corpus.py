"""Reading documents to index from the user's files, as (id, text) pairs in file order.

- `.txt`: a document a line; blank lines are skipped (they still count for line numbers).
- `.jsonl`: an object a line; the text and id by field name.
- `.json`: an array of objects (fields by name) or of strings.
- `.parquet`: rows, the text and id by column name (needs pyarrow, imported only here).
Any of them may be gzip-compressed (`.txt.gz`, ...). An input may also be a directory (its files
of these kinds, recursively, in name order) or a glob pattern ("docs/*.jsonl"). A document's id is
its id field, or else its 0-based line (element, row) number; when there are several files that
number is prefixed by the file, "notes.txt:12", so ids stay unique.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.compressed import open_compressed
from lmforge.errors import LmforgeError

FORMATS = (".txt", ".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 65_536


def _format(path: Path) -> str:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    kind = suffixes[0] if suffixes else ""
    if kind not in FORMATS:
        raise LmforgeError(
            f"{path}: cannot tell the format from the name; use {', '.join(FORMATS)} (optionally + .gz)"
        )
    return kind


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(0-based line number, line without its line break); decoded line by line so that an error
    names the line that is not UTF-8."""
    with open_compressed(path) as lines:
        for number, raw in enumerate(lines):
            try:
                line = raw.decode("utf-8-sig" if number == 0 else "utf-8")
            except UnicodeDecodeError:
                raise LmforgeError(f"{path}:{number + 1}: not UTF-8 text; convert the file to UTF-8") from None
            yield number, line.rstrip("\r\n")


# Each reader yields (0-based line, element or row number, id from the id field or None, text).
Numbered = Iterator[tuple[int, object, str]]


def _from_record(record: object, where: str, text_field: str, id_field: str) -> tuple[object, str]:
    if isinstance(record, str):
        return None, record
    if not isinstance(record, dict):
        raise LmforgeError(f"{where}: expected a JSON object with a {text_field!r} field, found {type(record).__name__}")
    if text_field not in record:
        fields = ", ".join(map(repr, list(record)[:10])) or "none"
        raise LmforgeError(f"{where}: no field {text_field!r} (fields: {fields}); name the text field with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise LmforgeError(f"{where}: field {text_field!r} is a {type(text).__name__}, not a string")
    document_id = record.get(id_field) if id_field else None
    if document_id is not None and (isinstance(document_id, bool) or not isinstance(document_id, int | str)):
        raise LmforgeError(
            f"{where}: id field {id_field!r} holds {document_id!r}; ids must be strings or integers "
            "(or pass --id-field '' to number the documents)"
        )
    return document_id, text


def _read_txt(path: Path) -> Numbered:
    for number, line in _lines(path):
        if line.strip():
            yield number, None, line


def _read_jsonl(path: Path, text_field: str, id_field: str) -> Numbered:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise LmforgeError(f"{path}:{number + 1}: not valid JSON ({error}); fix or remove the line") from None
        yield number, *_from_record(record, f"{path}:{number + 1}", text_field, id_field)


def _read_json(path: Path, text_field: str, id_field: str) -> Numbered:
    try:
        with open_compressed(path) as file:
            records = json.loads(file.read().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: not UTF-8 text; convert the file to UTF-8") from None
    except ValueError as error:
        raise LmforgeError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(records, list):
        raise LmforgeError(f"{path}: expected a JSON array of documents, found a {type(records).__name__}; "
                           "for one document a line use .jsonl")
    for number, record in enumerate(records):
        yield number, *_from_record(record, f"{path}: element {number}", text_field, id_field)


def _read_parquet(path: Path, text_field: str, id_field: str) -> Numbered:
    try:
        import pyarrow.parquet
    except ImportError:
        raise LmforgeError(f"{path}: reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        file = pyarrow.parquet.ParquetFile(path)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise LmforgeError(f"{path}: not a readable Parquet file ({error})") from None
    columns = file.schema_arrow.names
    if text_field not in columns:
        raise LmforgeError(f"{path}: no column {text_field!r} (columns: {', '.join(columns)}); name it with --text-field")
    wanted = [text_field] + ([id_field] if id_field and id_field in columns and id_field != text_field else [])
    number = 0
    for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
        for record in batch.to_pylist():
            if record[text_field] is not None:
                yield number, *_from_record(record, f"{path}: row {number}", text_field, id_field)
            number += 1


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def _is_document_file(path: Path) -> bool:
    return path.is_file() and path.name.removesuffix(".gz").endswith(FORMATS)


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files named by `inputs`: files as given, directories and glob patterns expanded."""
    if not inputs:
        raise LmforgeError("no input given; name at least one .txt, .jsonl, .json or .parquet file")
    files: list[Path] = []
    for spec in map(str, inputs):
        path = Path(spec)
        if path.is_dir():
            found = sorted(file for file in path.rglob("*") if _is_document_file(file))
        elif path.is_file():
            _format(path)
            found = [path]
        elif glob.has_magic(spec):
            found = sorted(Path(file) for file in glob.glob(spec, recursive=True) if _is_document_file(Path(file)))
        else:
            raise LmforgeError(f"{spec}: no such file, directory or matching pattern")
        if not found:
            raise LmforgeError(f"{spec}: holds no {', '.join(FORMATS)} file (optionally .gz)")
        files.extend(found)
    return files


def read_documents(inputs: Sequence[str | Path], text_field: str = "text", id_field: str = "id") -> Iterator[tuple[object, str]]:
    """(id, text) for every document of every input, in order; see the module docstring."""
    paths = input_files(inputs)
    for path in paths:
        kind = _format(path)
        if kind == ".txt":
            documents = _read_txt(path)
        else:
            documents = READERS[kind](path, text_field, id_field)
        for number, document_id, text in documents:
            if document_id is None:
                document_id = number if len(paths) == 1 else f"{path}:{number}"
            yield document_id, text
