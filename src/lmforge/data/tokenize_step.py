"""Documents to token ids, split into train and validation by a hash of the id.

Each task writes, per split and per pass (a document seen three times is written in passes 0, 1
and 2), a flat file of ids and a file of document lengths; the final merge lays passes end to end
so that repeated documents are far apart in the shards."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmforge.data.batched import batched
from lmforge.data.document import Document
from lmforge.data.step import PipelineStep
from lmforge.data.words import unit_interval

VALIDATION_SEED = 0x5EED  # independent of the mixing seed, so the held-out set never changes with it


def split_of(document_id: str, val_fraction: float) -> str:
    return "val" if unit_interval(document_id, VALIDATION_SEED) < val_fraction else "train"


class TokenFiles:
    """The token and length files of one task, opened on first use, under temporary names until `commit`."""

    def __init__(self, directory: Path, task: str, dtype: np.dtype, temporary_suffix: str):
        self.directory, self.task, self.dtype, self.suffix = directory, task, dtype, temporary_suffix
        self.files: dict[tuple[str, int], tuple] = {}

    def path(self, split: str, epoch_pass: int, kind: str) -> Path:
        return self.directory / f"{self.task}.{split}.{epoch_pass}.{kind}"

    def write(self, split: str, epoch_pass: int, ids: np.ndarray) -> None:
        key = (split, epoch_pass)
        if key not in self.files:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.path(split, epoch_pass, f"bin.{self.suffix}")
            self.files[key] = (open(temporary, "wb"), [])
        handle, lengths = self.files[key]
        handle.write(ids.tobytes())
        lengths.append(len(ids))

    def commit(self) -> list[tuple[str, int]]:
        """Close and rename every file; returns the (split, pass) pairs written."""
        for (split, epoch_pass), (handle, lengths) in self.files.items():
            handle.close()
            with open(self.path(split, epoch_pass, f"lengths.{self.suffix}"), "wb") as file:
                np.save(file, np.array(lengths, dtype=np.int64))
            self.path(split, epoch_pass, f"lengths.{self.suffix}").replace(self.path(split, epoch_pass, "lengths.npy"))
            self.path(split, epoch_pass, f"bin.{self.suffix}").replace(self.path(split, epoch_pass, "bin"))
        return sorted(self.files)

    def discard(self) -> None:
        for (split, epoch_pass), (handle, _) in self.files.items():
            handle.close()
            self.path(split, epoch_pass, f"bin.{self.suffix}").unlink(missing_ok=True)


class TokenizeStep(PipelineStep):
    """Encodes documents a batch at a time (special-token text such as `<|endoftext|>` inside a
    document is encoded as plain text, so only the shard writer's eos separates documents)."""

    name = "tokenize"

    def __init__(self, tokenizer, files: TokenFiles, val_fraction: float, batch_size: int = 512):
        super().__init__()
        self.tokenizer = tokenizer
        self.files = files
        self.val_fraction = val_fraction
        self.batch_size = batch_size

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(documents, self.batch_size):
            yield from self._encode(batch)

    def _encode(self, batch: list[Document]) -> list[Document]:
        encoded = self.tokenizer.encode_batch([document.text for document in batch], allowed_special=False)
        for document, ids in zip(batch, encoded):
            self.stats.count_in(document)
            split = split_of(document.id, self.val_fraction)
            passes = 1 if split == "val" else document.cache.get("copies", 1)
            array = np.asarray(ids, dtype=self.files.dtype)
            for epoch_pass in range(passes):
                self.files.write(split, epoch_pass, array)
            # counters keep per-source totals for the mixture report (eos included in tokens)
            self.stats.add(f"{split}_documents", passes)
            self.stats.add(f"{split}_tokens", passes * (len(ids) + 1))
            self.stats.add(f"{split}_characters:{document.source}", passes * len(document.text))
            self.stats.add(f"{split}_tokens:{document.source}", passes * (len(ids) + 1))
            self.keep(document)
        return batch
