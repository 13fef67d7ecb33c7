"""Cutting documents into passages of at most N model tokens, consecutive ones sharing M tokens.

The retrieval package knows no tokenizer: the caller passes `token_spans`, which gives each
token's [start, end) in characters. A byte-level BPE token may hold part of a UTF-8 character
(a Chinese character or an emoji is often two or three tokens); such a token spans the whole
character, as the Hugging Face tokenizers report offsets, so the tokens of one character overlap.
A passage is cut only between tokens that do not overlap (a character boundary), so no character
is ever split:

- a passage's end moves back to the nearest character boundary, so it never holds more than N
  tokens; only a run of more than N tokens with no character boundary inside stays whole;
- the next passage starts M tokens before that end, moved forward to the nearest character
  boundary (and further if it must, to reach past that end within N tokens), so consecutive
  passages share at most M tokens (exactly M when no cut moved) and no text is lost.

Each passage is the slice text[start:end] of its document; with no overlap the passages tile it.
Text that no token's span covers (spaces some tokenizers leave out) goes with the token after it.
A chunked index stores, besides the passages, `PassageSources`: each passage's document and span.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.retrieval.storage import Ids, ids_at, ids_kind, load_array, load_ids, save_array, save_ids

# Texts -> for each text, its tokens' [start, end) character offsets, in token order.
TokenSpans = Callable[[list[str]], list[Sequence[tuple[int, int]]]]
BATCH = 256  # documents tokenized together: the tokenizer spreads a batch over the cores


@dataclasses.dataclass(frozen=True)
class Chunking:
    """How `lmforge bm25 index --chunk-tokens` cut the documents; stored in the index's meta.json."""

    chunk_tokens: int
    overlap: int = 0
    tokenizer: str = ""  # whose tokens were counted: the path given to --tokenizer

    def __post_init__(self) -> None:
        if isinstance(self.chunk_tokens, bool) or not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise LmforgeError(f"--chunk-tokens must be a whole number of tokens, at least 1; got {self.chunk_tokens!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 0 <= self.overlap < self.chunk_tokens:
            raise LmforgeError(
                f"--chunk-overlap {self.overlap!r} must be a whole number of tokens, 0 or more and less than "
                f"--chunk-tokens {self.chunk_tokens}"
            )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PassageSources:
    """Where each passage of a chunked index comes from. In the index directory:

        document_ids.npy | document_ids_bytes.npy + document_ids_ends.npy    by document position
        passage_documents.npy     per passage, its document's position
        passage_spans.npy         per passage, its [start, end) in its document's text (n x 2)
    """

    chunking: Chunking
    document_ids: Ids
    documents: np.ndarray
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.documents)

    def at(self, passages: np.ndarray) -> list[tuple[int | str, tuple[int, int]]]:
        """(document id, (start, end)) of each passage at `passages`."""
        document_ids = ids_at(self.document_ids, self.documents[passages])
        return [(document_id, (int(start), int(end))) for document_id, (start, end) in zip(document_ids, self.spans[passages])]

    def save(self, directory: Path) -> dict:
        """Write the arrays; returns the entries they add to meta.json."""
        save_ids(directory, "document_ids", self.document_ids)
        save_array(directory, "passage_documents", self.documents)
        save_array(directory, "passage_spans", self.spans)
        return {"chunking": self.chunking.to_json(), "source_documents": len(self.document_ids),
                "document_ids": ids_kind(self.document_ids)}

    @classmethod
    def load(cls, directory: Path, meta: dict, mmap: bool) -> PassageSources | None:
        """The sources `save` wrote, None for an index built without chunking. Raises KeyError,
        TypeError or ValueError on a bad meta.json, LmforgeError on files that do not agree."""
        if meta.get("chunking") is None:
            return None
        chunking = Chunking(**meta["chunking"])
        n_documents = int(meta["source_documents"])
        sources = cls(chunking, load_ids(directory, "document_ids", meta["document_ids"], mmap),
                      load_array(directory, "passage_documents", mmap), load_array(directory, "passage_spans", mmap))
        documents, spans = sources.documents, sources.spans
        if not (len(sources.document_ids) == n_documents and documents.ndim == 1 and spans.shape == (len(documents), 2)
                and (len(documents) == 0 or 0 <= documents.min() and documents.max() < n_documents)):
            raise LmforgeError(f"{directory}: the passages' documents and spans do not agree with each other or with "
                               "meta.json; rebuild it with `lmforge bm25 index`")
        return sources


def passage_spans(text_length: int, token_spans: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """The [start, end) character spans of a text's passages, given its tokens' character spans;
    one span, the whole text, when it holds at most `chunk_tokens` tokens."""
    spans = np.asarray(token_spans, dtype=np.int64).reshape(-1, 2)
    n_tokens = len(spans)
    if n_tokens <= chunk_tokens:
        return [(0, text_length)]
    # Boundary i lies before token i. reach[i - 1] is where the text of tokens 0..i-1 ends; the
    # boundary is a character boundary unless token i starts inside a character they end in.
    reach = np.maximum.accumulate(spans[:, 1])
    cuts = np.concatenate(([0], np.flatnonzero(reach[:-1] <= spans[1:, 0]) + 1, [n_tokens]))  # ascending

    def offset(boundary: int) -> int:
        return 0 if boundary == 0 else text_length if boundary == n_tokens else int(reach[boundary - 1])

    passages = []
    start = end = 0
    while end < n_tokens:
        next_cut = int(cuts[np.searchsorted(cuts, end, side="right")])
        if end > 0:  # past the first passage: start `overlap` tokens back, where a cut allows
            earliest = max(end - overlap, next_cut - chunk_tokens, start + 1)
            start = min(end, int(cuts[np.searchsorted(cuts, earliest, side="left")]))
        end = max(next_cut, int(cuts[np.searchsorted(cuts, start + chunk_tokens, side="right") - 1]))
        passages.append((offset(start), offset(end)))
    return passages


def chunk_documents(
    documents: Iterable[tuple[object, str]], chunking: Chunking, token_spans: TokenSpans
) -> Iterator[tuple[object, str, list[tuple[int, int]]]]:
    """(id, text, passage spans) for each (id, text) document, in order; tokenized in batches."""
    documents = iter(documents)
    while batch := list(itertools.islice(documents, BATCH)):
        texts = [text for _, text in batch]
        for (document_id, text), spans in zip(batch, token_spans(texts), strict=True):
            yield document_id, text, passage_spans(len(text), spans, chunking.chunk_tokens, chunking.overlap)
