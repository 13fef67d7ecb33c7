"""The shape of a pipeline step: a generator over documents that counts what it saw, kept and
dropped, and writes every dropped document, with its reason, to an exclusion file for audit.

As in datatrove, steps are chained generators (`step.run(previous.run(...))`), so a document flows
through all of them before the next is read and memory does not grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.data.batched import batched
from lmforge.data.document import Document


@dataclasses.dataclass
class StepStats:
    """Documents and characters in, kept, and dropped by reason; `counters` holds what only one
    step measures (tokens written, copies made); `warnings` what the person running it should read."""

    documents_in: int = 0
    characters_in: int = 0
    documents_kept: int = 0
    characters_kept: int = 0
    dropped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def count_in(self, document: Document) -> None:
        self.documents_in += 1
        self.characters_in += len(document.text)

    def count_kept(self, document: Document) -> None:
        self.documents_kept += 1
        self.characters_kept += len(document.text)

    def count_dropped(self, document: Document, reason: str) -> None:
        entry = self.dropped.setdefault(reason, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(document.text)

    def add(self, counter: str, amount: int) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + amount

    def merge(self, other: StepStats) -> None:
        self.documents_in += other.documents_in
        self.characters_in += other.characters_in
        self.documents_kept += other.documents_kept
        self.characters_kept += other.characters_kept
        for reason, entry in other.dropped.items():
            mine = self.dropped.setdefault(reason, {"documents": 0, "characters": 0})
            mine["documents"] += entry["documents"]
            mine["characters"] += entry["characters"]
        for counter, amount in other.counters.items():
            self.add(counter, amount)
        self.warnings += other.warnings

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> StepStats:
        return cls(**record)


class ExclusionWriter:
    """Dropped documents of one step and one task, as gzipped JSON lines. The file is written
    under a temporary name and only `commit` gives it its real one, so a crash leaves no half file."""

    def __init__(self, path: Path, temporary_suffix: str = "tmp"):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.{temporary_suffix}")
        self._file: gzip.GzipFile | None = None

    def write(self, document: Document, step: str, reason: str) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # no name or time in the gzip header: the same drops give the same bytes on every run
            self._raw = open(self.temporary, "wb")
            self._file = gzip.GzipFile(filename="", mode="wb", compresslevel=3, fileobj=self._raw, mtime=0)
        record = {"id": document.id, "source": document.source, "step": step, "reason": reason, "text": document.text}
        if document.meta:
            record["meta"] = document.meta
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def _close(self) -> bool:
        if self._file is None:
            return False
        self._file.close()
        self._raw.close()
        self._file = None
        return True

    def commit(self) -> None:
        if self._close():
            os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self._close()
        self.temporary.unlink(missing_ok=True)


class PipelineStep:
    """A step over a document stream. Subclasses set `name` and implement `run`; they report each
    document with `count_in`, then either `keep` or `drop`."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats = StepStats()
        self.excluded: ExclusionWriter | None = None

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        raise NotImplementedError

    def keep(self, document: Document) -> Document:
        self.stats.count_kept(document)
        return document

    def drop(self, document: Document, reason: str) -> None:
        self.stats.count_dropped(document, reason)
        if self.excluded is not None:
            self.excluded.write(document, self.name, reason)


class FilterStep(PipelineStep):
    """A step that keeps or drops each document unchanged; `reject` names the rule that fails."""

    def reject(self, document: Document) -> str | None:
        raise NotImplementedError

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.count_in(document)
            reason = self.reject(document)
            if reason is None:
                yield self.keep(document)
            else:
                self.drop(document, reason)


class BatchFilterStep(PipelineStep):
    """A filter whose rules are computed for a batch of documents at once (numpy over all their
    words); `reject_batch` returns one reason or None per document."""

    batch_size = 512

    def reject_batch(self, documents: list[Document]) -> list[str | None]:
        raise NotImplementedError

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(documents, self.batch_size):
            yield from self._decide(batch)

    def _decide(self, batch: list[Document]) -> list[Document]:
        kept = []
        for document, reason in zip(batch, self.reject_batch(batch)):
            self.stats.count_in(document)
            if reason is None:
                kept.append(self.keep(document))
            else:
                self.drop(document, reason)
        return kept
