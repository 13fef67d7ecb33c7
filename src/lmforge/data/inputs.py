"""From what the user typed (`--input pd=corpus/*.txt.gz`, recipe sources) to a sorted list of
files, each with its source name, format and compression."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from pathlib import Path

from lmforge.compressed import COMPRESSIONS
from lmforge.data.recipe import Source
from lmforge.errors import LmforgeError

FORMATS = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    relative: str
    """The path below the input's root: with the source name, what makes document ids stable
    when the corpus moves."""
    source: str
    format: str
    compression: str | None
    size: int


def file_format(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None for a file no reader handles."""
    name = path.lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
            break
    extension = os.path.splitext(name)[1]
    if extension not in FORMATS:
        return None
    return FORMATS[extension], compression


def parse_input(spec: str) -> tuple[str | None, str]:
    """`name=PATH` names a source; a plain PATH (or one that exists with `=` in it) does not."""
    name, equals, path = spec.partition("=")
    if equals and SOURCE_NAME.match(name) and not os.path.exists(spec):
        return name, path
    return None, spec


def glob_root(pattern: str) -> Path:
    """The directory part of a glob before its first wildcard: `a/b/*/c.txt` -> `a/b`."""
    prefix = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        prefix.append(part)
    return Path(*prefix) if prefix else Path(".")


def expand(pattern: str, source: str) -> list[InputFile]:
    """The readable files a path, directory or glob names, sorted so every rank sees one order."""
    if glob.has_magic(pattern):
        root = glob_root(pattern)
        candidates = [Path(match) for match in glob.glob(pattern, recursive=True)]
    elif os.path.isdir(pattern):
        root = Path(pattern)
        candidates = [path for path in root.rglob("*") if path.is_file()]
    elif os.path.isfile(pattern):
        root = Path(pattern).parent
        candidates = [Path(pattern)]
        if file_format(pattern) is None:
            raise LmforgeError(
                f"input {pattern}: unknown file type; lmforge reads .txt, .jsonl, .json and .parquet, "
                "each optionally .gz or .zst compressed"
            )
    else:
        raise LmforgeError(f"input {pattern}: no such file or directory")
    files = []
    for path in sorted(candidates):
        kind = file_format(str(path))
        if kind is None or not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        files.append(InputFile(str(path), path.relative_to(root).as_posix(), source, kind[0], kind[1], path.stat().st_size))
    if not files:
        raise LmforgeError(f"input {pattern}: matches no .txt, .jsonl, .json or .parquet file")
    return files


def resolve_sources(inputs: list[str], sources: list[Source]) -> list[Source]:
    """Recipe sources followed by one source per `--input`; unnamed inputs are named after their
    file or directory. Names must be unique because mixing weights refer to them."""
    resolved = list(sources)
    names = {source.name for source in sources}
    if len(names) < len(sources):
        raise LmforgeError("recipe: two sources share a name; give each source in `sources:` its own `name`")
    for spec in inputs:
        name, path = parse_input(spec)
        if name is None:
            named = glob_root(path) if glob.has_magic(path) else Path(path)
            stem = named.name.split(".")[0] if named.is_file() else named.resolve().name
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "input"
            base, number = name, 2
            while name in names:
                name, number = f"{base}-{number}", number + 1
        elif name in names:
            existing = next((source for source in resolved if source.name == name), None)
            existing.paths.append(path)
            continue
        names.add(name)
        resolved.append(Source(name=name, paths=[path]))
    if not resolved:
        raise LmforgeError("no input: pass --input PATH (or NAME=PATH), or list `sources:` in the --config recipe")
    return resolved


def list_files(sources: list[Source]) -> list[InputFile]:
    files: list[InputFile] = []
    for source in sources:
        seen: set[str] = set()
        for pattern in source.paths:
            for input_file in expand(pattern, source.name):
                if input_file.path not in seen:
                    seen.add(input_file.path)
                    files.append(input_file)
    return files
