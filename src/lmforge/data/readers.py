"""Files to documents: .txt (per file, paragraph or line), .jsonl, .json and .parquet.

A large uncompressed line-based file is cut into byte ranges ("pieces") at line or paragraph
boundaries, so several workers can read one big file; each piece knows the line number it starts
at, which keeps ids (`source/path:line`) and error messages exact.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import re
from collections.abc import Iterable, Iterator
from typing import Any

from lmforge.compressed import UnreadableFile, open_compressed, read_through
from lmforge.data.document import Document
from lmforge.data.inputs import InputFile
from lmforge.data.recipe import OnBadLine, ReadConfig
from lmforge.data.step import PipelineStep
from lmforge.errors import LmforgeError

BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
FIELD_PART = re.compile(r"^([^\[\].]+)((?:\[\])*)$")


@dataclasses.dataclass(frozen=True)
class Piece:
    """A byte range of one file, starting at line `first_line`; `end` None means the file's end."""

    file: InputFile
    read: ReadConfig
    start: int = 0
    end: int | None = None
    first_line: int = 1

    @property
    def size(self) -> int:
        return (self.file.size if self.end is None else self.end) - self.start


@dataclasses.dataclass
class BadRecord:
    """A line or record that cannot become a document: where, why, and its raw text."""

    location: str
    reason: str
    message: str
    raw: str


def split_file(input_file: InputFile, read: ReadConfig, piece_bytes: int) -> list[Piece]:
    """Cut a large uncompressed file into pieces of about `piece_bytes` at record boundaries."""
    splittable = (
        input_file.compression is None
        and (input_file.format == "jsonl" or (input_file.format == "txt" and read.unit != "file"))
        and "\n".encode(read.encoding, "ignore") == b"\n"
    )
    if not splittable or input_file.size <= piece_bytes:
        return [Piece(input_file, read)]
    pieces = []
    with open(input_file.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start, line = 0, 1
        while start < len(data):
            target = start + piece_bytes
            if target >= len(data):
                end = len(data)
            elif input_file.format == "txt" and read.unit == "paragraph":
                match = BLANK_LINE.search(data, target - 1)
                end = match.end() if match else len(data)
            else:
                newline = data.find(b"\n", target - 1)
                end = newline + 1 if newline >= 0 else len(data)
            pieces.append(Piece(input_file, read, start, end if end < len(data) else None, line))
            line += data[start:end].count(b"\n")
            start = end
    return pieces


def parse_field(spec: str) -> list[tuple[str, int]]:
    """`messages[].content` -> [("messages", 1), ("content", 0)]: a key and how many lists to open."""
    parts = []
    for part in spec.split("."):
        match = FIELD_PART.match(part)
        if match is None:
            raise LmforgeError(f"text field {spec!r}: write it as dotted keys with [] to open lists, e.g. messages[].content")
        parts.append((match.group(1), match.group(2).count("[]")))
    return parts


def extract_text(record: Any, field: list[tuple[str, int]]) -> str | None:
    """The string(s) at a parsed field path, joined by newlines; None when there are none."""
    values = [record]
    for key, lists in field:
        found = []
        for value in values:
            if isinstance(value, dict) and key in value:
                items = [value[key]]
                for _ in range(lists):
                    items = [item for sequence in items if isinstance(sequence, list) for item in sequence]
                found.extend(items)
        values = found
    texts = [value for value in values if isinstance(value, str)]
    return "\n".join(texts) if texts else None


class PieceReader:
    """Turns one piece into documents and bad records, by the file's format."""

    def __init__(self, piece: Piece):
        self.piece = piece
        self.file = piece.file
        self.field = parse_field(piece.read.text_field)
        self.id_prefix = f"{self.file.source}/{self.file.relative}"

    def __iter__(self) -> Iterator[Document | BadRecord]:
        reader = {"txt": self._text, "jsonl": self._json_lines, "json": self._json, "parquet": self._parquet}
        return reader[self.file.format]()

    def _where(self, line: int) -> str:
        return f"{self.file.path} line {line}"

    def _lines(self) -> Iterator[tuple[int, str | BadRecord]]:
        piece = self.piece
        with open_compressed(self.file.path) as handle:
            if piece.start:
                handle.seek(piece.start)
            position, number = piece.start, piece.first_line
            for raw in handle:
                if piece.end is not None and position >= piece.end:
                    break
                position += len(raw)
                try:
                    yield number, raw.decode(piece.read.encoding).rstrip("\r\n")
                except UnicodeDecodeError:
                    yield number, BadRecord(
                        self._where(number),
                        "bad_encoding",
                        f"{self._where(number)}: not valid {piece.read.encoding} text; pass --read.encoding "
                        "(e.g. gb18030) or convert the file to UTF-8",
                        raw.decode(piece.read.encoding, "replace"),
                    )
                number += 1

    def _text(self) -> Iterator[Document | BadRecord]:
        unit = self.piece.read.unit
        if unit == "file":
            with open_compressed(self.file.path) as handle:
                data = handle.read()
            try:
                text = data.decode(self.piece.read.encoding)
            except UnicodeDecodeError as error:
                line = data[: error.start].count(b"\n") + 1
                yield BadRecord(
                    self._where(line),
                    "bad_encoding",
                    f"{self._where(line)}: not valid {self.piece.read.encoding} text; pass --read.encoding "
                    "(e.g. gb18030) or convert the file to UTF-8",
                    data.decode(self.piece.read.encoding, "replace"),
                )
                return
            yield Document(self.id_prefix, text, self.file.source)
            return
        paragraph: list[str] = []
        first = 0
        for number, line in self._lines():
            if isinstance(line, BadRecord):
                yield line
                continue
            if unit == "line":
                if line.strip():
                    yield Document(f"{self.id_prefix}:{number}", line, self.file.source)
            elif line.strip():
                first = first or number
                paragraph.append(line)
            elif paragraph:
                yield Document(f"{self.id_prefix}:{first}", "\n".join(paragraph), self.file.source)
                paragraph, first = [], 0
        if paragraph:
            yield Document(f"{self.id_prefix}:{first}", "\n".join(paragraph), self.file.source)

    def _record(self, record: Any, location: str, default_id: str, raw: str) -> Document | BadRecord:
        if not isinstance(record, dict):
            message = f"{location}: expected a JSON object, got {type(record).__name__}; fix or remove it, or pass --on-bad-line skip"
            return BadRecord(location, "not_an_object", message, raw)
        text = extract_text(record, self.field)
        if text is None:
            fields = ", ".join(list(record)[:8])
            message = (
                f"{location}: no text at field {self.piece.read.text_field!r} (fields: {fields}); "
                "set --read.text_field, or pass --on-bad-line skip"
            )
            return BadRecord(location, "missing_field", message, raw)
        identifier = default_id
        id_field = self.piece.read.id_field
        if id_field and record.get(id_field) is not None:
            identifier = f"{self.file.source}/{record[id_field]}"
        return Document(identifier, text, self.file.source)

    def _json_lines(self) -> Iterator[Document | BadRecord]:
        for number, line in self._lines():
            if isinstance(line, BadRecord):
                yield line
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                message = (
                    f"{self._where(number)}: not valid JSON ({error.msg} at column {error.colno}); "
                    "fix or remove the line, or pass --on-bad-line skip"
                )
                yield BadRecord(self._where(number), "bad_json", message, line)
                continue
            yield self._record(record, self._where(number), f"{self.id_prefix}:{number}", line)

    def _json(self) -> Iterator[Document | BadRecord]:
        """A .json file holds one array of records (or an object of records); it is read whole,
        so keep very large corpora in .jsonl."""
        with open_compressed(self.file.path) as handle:
            data = handle.read()
        try:
            document = json.loads(data.decode(self.piece.read.encoding))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            line = getattr(error, "lineno", 1)
            message = f"{self._where(line)}: not valid JSON ({error}); fix the file (is it JSON lines? name it .jsonl)"
            yield BadRecord(self._where(line), "bad_json", message, "")
            return
        if isinstance(document, list):
            records = [(str(index + 1), record) for index, record in enumerate(document)]
        elif isinstance(document, dict) and extract_text(document, self.field) is None and all(
            isinstance(value, dict) for value in document.values()
        ):
            records = [(str(key), record) for key, record in document.items()]
        else:
            records = [("1", document)]
        for key, record in records:
            location = f"{self.file.path} record {key}"
            yield self._record(record, location, f"{self.id_prefix}:{key}", json.dumps(record, ensure_ascii=False)[:10000])

    def _parquet(self) -> Iterator[Document | BadRecord]:
        try:
            import pyarrow.parquet
        except ImportError:
            raise LmforgeError(f"reading {self.file.path} needs pyarrow: pip install pyarrow") from None
        columns = [self.field[0][0]] + ([self.piece.read.id_field] if self.piece.read.id_field else [])
        try:
            parquet = pyarrow.parquet.ParquetFile(self.file.path)
            missing = [column for column in columns if column not in parquet.schema_arrow.names]
            if missing:
                raise LmforgeError(
                    f"{self.file.path}: no column {missing[0]!r} (columns: {', '.join(parquet.schema_arrow.names[:8])}); "
                    "set --read.text_field"
                )
            row = 0
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):  # a damaged page fails here
                for record in batch.to_pylist():
                    row += 1
                    yield self._record(record, f"{self.file.path} row {row}", f"{self.id_prefix}:{row}", "")
        except (OSError, ValueError, pyarrow.ArrowException) as error:
            raise LmforgeError(f"{self.file.path}: not a readable Parquet file ({error})") from None


class ReadStep(PipelineStep):
    """Reads pieces into documents. A bad line stops the run with its file and line, or with
    `on_bad_line="skip"` is counted, dropped under its reason and written to the exclusion file.
    A damaged compressed file (truncated, corrupt, not what its suffix says) stops the run too; with
    "skip" it is read through first and, if damaged, left out whole as one `unreadable_file`, with a
    warning in the report: what precedes the damage cannot be trusted (gzip finds a corrupt block
    only at its checksum, at the end)."""

    name = "read"

    def __init__(self, on_bad_line: OnBadLine = "error"):
        super().__init__()
        self.on_bad_line = on_bad_line

    def run(self, pieces: Iterable[Piece]) -> Iterator[Document]:  # type: ignore[override]
        for piece in pieces:
            if self.on_bad_line == "skip" and not self._readable(piece):
                continue
            try:
                for item in PieceReader(piece):
                    if isinstance(item, BadRecord):
                        self._bad(item, piece)
                    else:
                        self.stats.count_in(item)
                        yield self.keep(item)
            except UnreadableFile as error:
                raise UnreadableFile(f"{error} (--on-bad-line skip leaves damaged files out)") from None

    def _readable(self, piece: Piece) -> bool:
        if piece.file.compression is None:
            return True
        try:
            read_through(piece.file.path)
        except UnreadableFile as error:
            self.stats.warnings.append(f"{error}; --on-bad-line skip left it out")
            self._bad(BadRecord(piece.file.path, "unreadable_file", str(error), ""), piece)
            return False
        return True

    def _bad(self, item: BadRecord, piece: Piece) -> None:
        if self.on_bad_line == "error":
            raise LmforgeError(item.message)
        document = Document(item.location, item.raw, piece.file.source)
        self.stats.count_in(document)
        self.drop(document, item.reason)


def read_paths(paths: list[str], read: ReadConfig, source: str, on_bad_line: OnBadLine = "error") -> Iterator[Document]:
    """Every document under `paths` (files, directories, globs), outside a prepare run."""
    from lmforge.data.inputs import expand

    files = [input_file for path in paths for input_file in expand(path, source)]
    yield from ReadStep(on_bad_line).run(Piece(input_file, read) for input_file in files)
