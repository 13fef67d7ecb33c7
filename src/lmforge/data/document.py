"""The unit every pipeline step reads and yields."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Document:
    """One document: a stable `id` (`source/relative/path:line`), its text, the named source it
    came from, and what steps learned about it (`language`, `quality`, ...) in `meta`."""

    id: str
    text: str
    source: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """Values derived from `text` by a step for later steps (its words); never saved."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "source": self.source, "text": self.text}
        if self.meta:
            record["meta"] = self.meta
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Document:
        return cls(id=record["id"], text=record["text"], source=record["source"], meta=record.get("meta", {}))
