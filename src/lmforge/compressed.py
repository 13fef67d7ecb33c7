"""Reading an input file that may be compressed (.gz, .zst), for every command that reads text.

A damaged, truncated or mislabelled file fails while it is read, not when it is opened (gzip
finds a bad header at the first read and a missing end at the last), so `open_compressed` turns
the errors raised anywhere inside its `with` block into one `UnreadableFile` that names the file.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lmforge.errors import LmforgeError

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


class UnreadableFile(LmforgeError):
    """An input file whose bytes cannot be read or decompressed."""


def compression_of(path: str | Path) -> str | None:
    """"gzip", "zstd" or None, from the file's name."""
    name = str(path).lower()
    return next((kind for suffix, kind in COMPRESSIONS.items() if name.endswith(suffix)), None)


class _ZstdFrames(io.RawIOBase):
    """A .zst file's decompressed bytes, frame after frame, failing at the end when the last frame
    is cut short (zstandard's own `stream_reader` just stops there, so truncation went unseen)."""

    def __init__(self, path: str | Path, zstandard) -> None:
        self._file, self._zstandard = open(path, "rb"), zstandard
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._pending, self._finished = b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._finished:
            if self._frame.eof:  # a frame ended: the next one starts with what it left over, if anything
                chunk = self._frame.unused_data or self._file.read(1 << 20)
                self._frame = self._zstandard.ZstdDecompressor().decompressobj()
                self._finished = not chunk
            else:
                chunk = self._file.read(1 << 20)
                if not chunk:
                    raise EOFError("the file ends inside a zstd frame")
            if chunk:
                self._pending = self._frame.decompress(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count], self._pending = self._pending[:count], self._pending[count:]
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def open_compressed(path: str | Path) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed as its suffix says; zstandard is imported only for a .zst file."""
    compression = compression_of(path)
    read_errors: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise LmforgeError(f"reading {path} needs the zstandard package: pip install zstandard") from None
        read_errors += (zstandard.ZstdError,)
    try:
        if compression == "gzip":
            handle = gzip.open(path, "rb")
        elif compression == "zstd":
            handle = io.BufferedReader(_ZstdFrames(path, zstandard))
        else:
            handle = open(path, "rb")
        with handle:
            yield handle
    except read_errors as error:
        cause = getattr(error, "strerror", None) or error
        damage = f"; it is damaged, truncated or not {compression}-compressed" if compression else ""
        raise UnreadableFile(f"{path}: cannot read it ({cause}){damage}: replace it or leave it out") from None


def read_through(path: str | Path) -> None:
    """Decompress the whole file and discard it, so that damage is found before any of it is used
    (gzip checks its CRC only at the end, after the damaged part was already handed out)."""
    with open_compressed(path) as handle:
        while handle.read(1 << 20):
            pass

