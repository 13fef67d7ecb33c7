"""Where a command may write its output directory: the one check behind every `--overwrite`.

An output directory is replaced whole (`atomic.replace_directory`), so replacing the wrong one
loses data. A command replaces only an earlier output of its own kind (a directory that holds
nothing but the files that kind writes, finished), and never writes to a directory that is,
contains or lies inside one of its inputs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """What one command writes, so that `--overwrite` can tell an earlier output of it."""

    name: str  # for messages: "a BM25 index"
    files: tuple[str, ...]  # glob patterns of every file it writes; it writes no subdirectories
    finished: Callable[[Path], bool]  # true for a directory it completed (its last-written file is there)

    def foreign_entry(self, directory: Path) -> str | None:
        """The name of an entry of `directory` this kind never writes, if there is one."""
        for entry in sorted(directory.iterdir()):
            if not (entry.is_file() and any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in self.files)):
                return entry.name
        return None


def check_output_directory(
    out: Path, kind: OutputKind, *, overwrite: bool, option: str, sources: Sequence[Path] = (),
) -> None:
    """Raise LmforgeError unless `kind` may be written at `out`: before any work, so a refusal costs nothing.

    `option` names the output in messages (--out); `sources` are the command's input paths.
    """
    out = Path(out)
    target = out.resolve()  # symbolic links and `..` resolved: an alias of the source is the source
    for source in map(Path, sources):
        origin = source.resolve()
        if target.is_relative_to(origin) or origin.is_relative_to(target):
            relation = "is" if target == origin else "is inside" if target.is_relative_to(origin) else "contains"
            raise LmforgeError(f"{out} {relation} the source {source}; choose another {option}, outside the source")
    if out.is_symlink():  # replacing would rename the link, not the directory it points to
        raise LmforgeError(f"{out} is a symbolic link; give the directory it points to ({target}) or another {option}")
    if not out.exists():
        return
    if not out.is_dir():
        raise LmforgeError(f"{out} exists and is not a directory; choose another {option}")
    if not any(out.iterdir()):
        return
    foreign = kind.foreign_entry(out)
    if foreign is not None or not kind.finished(out):
        holds = "" if foreign is None else f" (it holds {foreign!r})"
        raise LmforgeError(
            f"{out} is not {kind.name}{holds}; refusing to replace it, even with --overwrite: choose another {option}"
        )
    if not overwrite:
        raise LmforgeError(f"{out} already exists; pass --overwrite to replace it or choose another {option}")
