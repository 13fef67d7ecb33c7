"""How an index directory holds arrays and strings: `.npy` files, memory-mapped on load.

Strings (the passages, string ids) are packed as one UTF-8 byte array plus an offsets array, so
a million passages load in no time and only the ones a search returns are ever decoded. Ids are
all integers (one int64 array) or all strings (packed).
"""

from __future__ import annotations

import numbers
from array import array
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError


def save_array(directory: Path, name: str, values: np.ndarray) -> None:
    np.save(directory / f"{name}.npy", values, allow_pickle=False)


def load_array(directory: Path, name: str, mmap: bool) -> np.ndarray:
    """The array `name.npy` of an index directory, memory-mapped when asked and possible."""
    path = directory / f"{name}.npy"
    try:
        # An empty file cannot be memory-mapped, and nothing is gained by mapping a tiny one.
        mode = "r" if mmap and path.stat().st_size > 4096 else None
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise LmforgeError(
            f"{path}: cannot read the index array ({error}); the index is damaged, rebuild it with "
            "`lmforge bm25 index`"
        ) from None


class PackedStringsWriter:
    """Collects strings as UTF-8 bytes and end offsets: a few bytes of overhead a string, not ~50."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._bytes += text.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._bytes))

    def __len__(self) -> int:
        return len(self._ends)

    def finish(self) -> PackedStrings:
        return PackedStrings(np.frombuffer(self._bytes, dtype=np.uint8), np.frombuffer(self._ends, dtype=np.int64))


class PackedStrings:
    """A read-only sequence of strings over a byte array and end offsets (possibly memory-mapped)."""

    def __init__(self, data: np.ndarray, ends: np.ndarray) -> None:
        self.data = data
        self.ends = ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, index: int) -> str:
        start = int(self.ends[index - 1]) if index > 0 else 0
        return self.data[start : int(self.ends[index])].tobytes().decode("utf-8", "surrogatepass")

    def save(self, directory: Path, name: str) -> None:
        save_array(directory, f"{name}_bytes", self.data)
        save_array(directory, f"{name}_ends", self.ends)

    @classmethod
    def load(cls, directory: Path, name: str, mmap: bool) -> PackedStrings:
        data = load_array(directory, f"{name}_bytes", mmap)
        ends = load_array(directory, f"{name}_ends", mmap)
        if data.dtype != np.uint8 or ends.ndim != 1 or (len(ends) and int(ends[-1]) != len(data)):
            raise LmforgeError(
                f"{directory}: {name}_bytes.npy and {name}_ends.npy do not agree; the index is "
                "damaged, rebuild it with `lmforge bm25 index`"
            )
        return cls(data, ends)


Ids = np.ndarray | PackedStrings  # integer ids as an int64 array, string ids packed


def ids_kind(ids: Ids) -> str:
    """How meta.json names the kind of `ids`: "int" or "str"."""
    return "int" if isinstance(ids, np.ndarray) else "str"


def save_ids(directory: Path, name: str, ids: Ids) -> None:
    if isinstance(ids, np.ndarray):
        save_array(directory, name, ids)
    else:
        ids.save(directory, name)


def load_ids(directory: Path, name: str, kind: str, mmap: bool) -> Ids:
    return load_array(directory, name, mmap) if kind == "int" else PackedStrings.load(directory, name, mmap)


def ids_at(ids: Ids, positions: np.ndarray) -> list[int | str]:
    """The ids at `positions`, as Python ints or strings."""
    if isinstance(ids, np.ndarray):
        return ids[positions].tolist()
    return [ids[int(position)] for position in positions]


class IdCollector:
    """Document ids as given: all integers or all strings, no two alike."""

    def __init__(self) -> None:
        self.integers = array("q")
        self.strings = PackedStringsWriter()
        self.kind: type | None = None
        self.seen: set[int | str] = set()

    def append(self, document_id: object, position: int) -> None:
        kind = type(document_id)
        if kind is not int and kind is not str:  # the usual types first: this runs per document
            document_id = self._convert(document_id, position)
            kind = type(document_id)
        if self.kind is None:
            self.kind = kind
        elif kind is not self.kind:
            raise LmforgeError(
                f"document {position}: id {document_id!r} is a {kind.__name__} but the ids before it "
                f"are {self.kind.__name__}s; give every document an id of one type"
            )
        if document_id in self.seen:
            raise LmforgeError(f"document {position}: id {document_id!r} is used twice; ids must be unique")
        self.seen.add(document_id)
        if kind is str:
            self.strings.append(document_id)
            return
        try:
            self.integers.append(document_id)
        except OverflowError:
            raise LmforgeError(f"document {position}: id {document_id} does not fit in 64 bits; use a string id") from None

    @staticmethod
    def _convert(document_id: object, position: int) -> int | str:
        """Other integer types (NumPy's) as int, str subclasses as str; anything else is refused."""
        if isinstance(document_id, bool) or not isinstance(document_id, numbers.Integral | str):
            raise LmforgeError(
                f"document {position}: id {document_id!r} is a {type(document_id).__name__}; "
                "ids must be integers or strings"
            )
        return str(document_id) if isinstance(document_id, str) else int(document_id)

    def finish(self) -> Ids:
        return self.strings.finish() if self.kind is str else np.frombuffer(self.integers, dtype=np.int64)
