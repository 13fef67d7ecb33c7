"""A BM25 index: built from texts, searched one query or a batch at a time, saved and
memory-mapped back.

Scores are precomputed when the index is built (`bm25.py` gives the formula, `postings.py` the
weight matrix and the ranking), so a search only adds up a few rows of weights.

An index directory holds:

    meta.json                 format, version, parameters, analyzer, counts
    vocabulary.json           the terms, in term-id order
    indptr.npy                W in CSR form: term t's postings are [indptr[t], indptr[t + 1])
    postings_documents.npy      their document positions (0-based, in input order)
    postings_weights.npy        their weights
    absent.npy                per term, its score in a document without it
    ids.npy | ids_bytes.npy + ids_ends.npy      document ids: integers, or packed strings
    texts_bytes.npy + texts_ends.npy            the passages, packed UTF-8

An index built with chunking (`chunks.py`) indexes passages cut from the documents: its "documents"
above are those passages, with ids "DOCID#K" (K = 0, 1, ... within the document), and it also holds
each passage's document and character span (`PassageSources`). Without chunking a passage is a
whole document, its span the whole text.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import numbers
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_directory
from lmforge.errors import LmforgeError
from lmforge.output_directory import OutputKind, check_output_directory
from lmforge.retrieval.analyzers import Analyzer, make_analyzer
from lmforge.retrieval.bm25 import BM25Parameters, query_weights
from lmforge.retrieval.chunks import Chunking, PassageSources, TokenSpans, chunk_documents
from lmforge.retrieval.postings import Postings, build_postings
from lmforge.retrieval.queries import Queries, Ranked
from lmforge.retrieval.storage import (
    IdCollector,
    Ids,
    PackedStrings,
    PackedStringsWriter,
    ids_at,
    ids_kind,
    load_array,
    load_ids,
    save_array,
    save_ids,
)

Id = int | str
FORMAT = "lmforge-bm25"
VERSION = 1
REBUILD = "rebuild it with `lmforge bm25 index`"
# What `save` writes (meta.json last): `--overwrite` replaces only such a directory.
INDEX_KIND = OutputKind("a BM25 index", files=("meta.json", "vocabulary.json", "*.npy"),
                        finished=lambda directory: (directory / "meta.json").is_file())


@dataclasses.dataclass(frozen=True)
class Passage:
    """One search result with the text it points to: text == the document's text[span[0]:span[1]]."""

    id: Id
    score: float
    text: str
    document: Id  # the id of the document the passage was cut from (its own id when not chunked)
    span: tuple[int, int]  # [start, end) of the passage in that document's text, in characters


def _checked(documents: Iterable[tuple[Id, str]]) -> Iterator[tuple[Id, str]]:
    for position, (document_id, text) in enumerate(documents):
        if not isinstance(text, str):
            raise LmforgeError(f"document {position} (id {document_id!r}): text is a {type(text).__name__}, not a string")
        yield document_id, text


def _paired(ids: Iterable[Id], texts: Iterable[str]) -> Iterator[tuple[Id, str]]:
    id_iterator = iter(ids)
    for position, text in enumerate(texts):
        document_id = next(id_iterator, _END)
        if document_id is _END:
            raise LmforgeError(f"there are {position} ids but more texts; give one id a text")
        yield document_id, text
    if next(id_iterator, _END) is not _END:
        raise LmforgeError("there are more ids than texts; give one id a text")


_END = object()


class BM25Index:
    """Ranks the passages of a corpus for a query with BM25; see the module docstring."""

    def __init__(
        self,
        *,
        analyzer: Analyzer,
        parameters: BM25Parameters,
        vocabulary: dict[str, int],
        postings: Postings,
        ids: Ids,
        texts: PackedStrings,
        average_length: float,
        sources: PassageSources | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.parameters = parameters
        self.vocabulary = vocabulary
        self.postings = postings
        self.ids = ids
        self.texts = texts
        self.average_length = average_length
        self.sources = sources  # None: not chunked, a passage is a document

    def __len__(self) -> int:
        return self.postings.n_documents

    def __repr__(self) -> str:
        counted = "documents" if self.sources is None else f"passages of {len(self.sources.document_ids)} documents"
        return (
            f"BM25Index({len(self)} {counted}, {len(self.vocabulary)} terms, "
            f"variant={self.parameters.variant!r}, analyzer={self.analyzer.name!r})"
        )

    # Building ---------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        ids: Iterable[Id] | None = None,
        *,
        analyzer: str | Analyzer = "auto",
        stopwords: str = "none",
        stem: bool = False,
        variant: str = "okapi",
        k1: float = 1.5,
        b: float = 0.75,
        k2: float = 0.0,
        epsilon: float = 0.25,
        delta: float | None = None,
        chunking: Chunking | None = None,
        token_spans: TokenSpans | None = None,
        progress: bool = False,
    ) -> BM25Index:
        """Index `texts` (ids: their 0-based positions unless given). Options as for `lmforge bm25 index`;
        `chunking` and `token_spans` as for `from_documents`."""
        documents = zip(itertools.count(), texts) if ids is None else _paired(ids, texts)
        if not isinstance(analyzer, Analyzer):
            analyzer = make_analyzer(analyzer, stopwords, stem)
        parameters = BM25Parameters(variant=variant, k1=k1, b=b, k2=k2, epsilon=epsilon, delta=delta)
        return cls.from_documents(documents, analyzer=analyzer, parameters=parameters, chunking=chunking,
                                  token_spans=token_spans, progress=progress)

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[tuple[Id, str]],
        *,
        analyzer: Analyzer,
        parameters: BM25Parameters,
        chunking: Chunking | None = None,
        token_spans: TokenSpans | None = None,
        progress: bool = False,
    ) -> BM25Index:
        """Index (id, text) pairs, streamed once: memory holds the terms as int32 and the texts as
        UTF-8, never a Python object per term occurrence. With `chunking`, index the passages cut
        from each document, counting tokens with `token_spans` (see `chunks.py`)."""
        if (chunking is None) != (token_spans is None):
            raise LmforgeError("chunking needs both the chunking settings and token_spans, the tokenizer's offsets")
        # A term's id is the vocabulary's size when the term is first seen.
        vocabulary: collections.defaultdict[str, int] = collections.defaultdict()
        vocabulary.default_factory = vocabulary.__len__
        term_ids = array("i")
        lengths = array("q")
        ids = IdCollector()
        texts = PackedStringsWriter()
        document_ids = IdCollector()
        passage_documents = array("q")
        passage_spans = array("q")
        documents = _checked(documents)
        if progress:
            from tqdm import tqdm

            documents = tqdm(documents, desc="indexing", unit=" docs", file=sys.stderr, mininterval=0.5, disable=None)
        if chunking is None:
            passages = ((document_id, text, ((0, len(text)),)) for document_id, text in documents)
        else:
            passages = chunk_documents(documents, chunking, token_spans)
        for position, (document_id, text, spans) in enumerate(passages):
            if chunking is not None:
                document_ids.append(document_id, position)
            for number, (start, end) in enumerate(spans):
                passage = text[start:end]  # the text itself when it is the whole text
                terms = analyzer(passage)
                term_ids.extend(map(vocabulary.__getitem__, terms))
                ids.append(document_id if chunking is None else f"{document_id}#{number}", len(lengths))
                lengths.append(len(terms))
                texts.append(passage)
                if chunking is not None:
                    passage_documents.append(position)
                    passage_spans.extend((start, end))

        if not lengths:
            raise LmforgeError("no documents to index: the input holds none")
        if not vocabulary:
            raise LmforgeError(
                f"none of the {len(lengths)} documents has a term left after analysis "
                f"(analyzer {analyzer.name!r}, {len(analyzer.stopwords)} stop words); check the text "
                "field, the analyzer and the stop words"
            )
        postings, average_length = build_postings(
            np.frombuffer(term_ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64), len(vocabulary), parameters
        )
        sources = None if chunking is None else PassageSources(
            chunking, document_ids.finish(), np.frombuffer(passage_documents, dtype=np.int64),
            np.frombuffer(passage_spans, dtype=np.int64).reshape(-1, 2),
        )
        return cls(
            analyzer=analyzer,
            parameters=parameters,
            vocabulary=dict(vocabulary),
            postings=postings,
            ids=ids.finish(),
            texts=texts.finish(),
            average_length=average_length,
            sources=sources,
        )

    # Searching --------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10) -> list[tuple[Id, float]]:
        """The k best documents for `query` as (id, score), best first; [] when no term matches."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[list[tuple[Id, float]]]:
        """`search` for each query, computed as one batch (much faster than a loop)."""
        return [list(zip(ids_at(self.ids, documents), scores.tolist())) for documents, scores in self._top_k(queries, k)]

    def search_passages(self, queries: Sequence[str], k: int = 10) -> list[list[Passage]]:
        """`search_many` with each result's text, document and span, for showing or grounding answers."""
        return [self._passages(documents, scores.tolist()) for documents, scores in self._top_k(queries, k)]

    def _passages(self, positions: np.ndarray, scores: list[float]) -> list[Passage]:
        ids = ids_at(self.ids, positions)
        texts = [self.texts[int(position)] for position in positions]
        if self.sources is None:
            sources = [(passage_id, (0, len(text))) for passage_id, text in zip(ids, texts)]
        else:
            sources = self.sources.at(positions)
        return [Passage(passage_id, score, text, document_id, span)
                for passage_id, score, text, (document_id, span) in zip(ids, scores, texts, sources)]

    def scores(self, query: str) -> np.ndarray:
        """Every document's score for `query`, in document order (for analysis and tests)."""
        queries = self._analyze([query])
        return self.postings.scores(queries, 0) + queries.constants[0]

    def indexed_terms(self, query: str) -> list[str]:
        """The terms of `query`, as the analyzer makes them, that occur in the index."""
        return [term for term in dict.fromkeys(self.analyzer(query)) if term in self.vocabulary]

    def _analyze(self, queries: Sequence[str]) -> Queries:
        """The queries' vocabulary terms and weights; a term repeated in a query is one entry."""
        if isinstance(queries, str):
            raise LmforgeError("search_many takes a list of queries, not one string; use search for one")
        lookup = self.vocabulary.get
        term_ids: list[int] = []
        counts: list[int] = []
        row_ends = [0]
        for query in queries:
            if not isinstance(query, str):
                raise LmforgeError(f"query {len(row_ends) - 1} is a {type(query).__name__}, not a string")
            frequencies = collections.Counter(map(lookup, self.analyzer(query)))
            frequencies.pop(None, None)  # terms out of the vocabulary
            ordered = sorted(frequencies)  # the order of the sums, hence of the scores' last bits
            term_ids.extend(ordered)
            counts.extend(map(frequencies.__getitem__, ordered))
            row_ends.append(len(term_ids))
        term_array = np.array(term_ids, dtype=self.postings.indptr.dtype)
        weights = query_weights(np.array(counts, dtype=np.float64), self.parameters.k2)
        constants = np.zeros(len(queries))
        if self.parameters.variant in ("bm25+", "bm25l"):
            contributions = (weights * self.postings.absent[term_array]).tolist()
            constants[:] = [sum(contributions[start:end]) for start, end in itertools.pairwise(row_ends)]
        return Queries(np.array(row_ends, dtype=self.postings.indptr.dtype), term_array, weights, constants)

    def _top_k(self, queries: Sequence[str], k: int) -> list[Ranked]:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise LmforgeError(f"k must be a whole number of results, at least 1; got {k!r}")
        return self.postings.top_k(self._analyze(queries), int(k))

    # Storage ----------------------------------------------------------------------------------

    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write the index to `directory` atomically: into a temporary sibling, renamed into place."""
        check_output_directory(directory, INDEX_KIND, overwrite=overwrite, option="--out")
        with atomic_directory(directory) as staging:
            self._write(staging)

    def _write(self, directory: Path) -> None:
        (directory / "vocabulary.json").write_text(json.dumps(list(self.vocabulary), ensure_ascii=False), encoding="utf-8")
        save_array(directory, "indptr", self.postings.indptr)
        save_array(directory, "postings_documents", self.postings.documents)
        save_array(directory, "postings_weights", self.postings.weights)
        save_array(directory, "absent", self.postings.absent)
        save_ids(directory, "ids", self.ids)
        self.texts.save(directory, "texts")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "documents": len(self),
            "terms": len(self.vocabulary),
            "postings": len(self.postings.weights),
            "average_length": self.average_length,
            "ids": ids_kind(self.ids),
            "parameters": self.parameters.to_json(),
            "analyzer": self.analyzer.to_json(),
            **({} if self.sources is None else self.sources.save(directory)),
        }
        # meta.json last: a directory that has one is complete.
        (directory / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> BM25Index:
        """Read an index written by `save`; with mmap the arrays stay on disk until touched."""
        directory = Path(directory)
        meta = _read_meta(directory)
        try:
            parameters = BM25Parameters(**meta["parameters"])
            analyzer = Analyzer.from_json(meta["analyzer"])
            n_documents, n_terms = int(meta["documents"]), int(meta["terms"])
            average_length = float(meta["average_length"])
            id_kind = meta["ids"]
            sources = PassageSources.load(directory, meta, mmap)
        except (KeyError, TypeError, ValueError) as error:
            raise LmforgeError(f"{directory / 'meta.json'}: a field is missing or wrong ({error}); {REBUILD}") from None
        try:
            terms = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise LmforgeError(f"{directory / 'vocabulary.json'}: cannot read it ({error}); {REBUILD}") from None
        indptr = load_array(directory, "indptr", mmap)
        documents = load_array(directory, "postings_documents", mmap)
        weights = load_array(directory, "postings_weights", mmap)
        absent = load_array(directory, "absent", mmap)
        ids = load_ids(directory, "ids", id_kind, mmap)
        texts = PackedStrings.load(directory, "texts", mmap)
        consistent = (
            isinstance(terms, list) and len(terms) == n_terms == len(absent) and len(indptr) == n_terms + 1
            and indptr[0] == 0 and indptr[-1] == len(documents) == len(weights)
            and len(ids) == n_documents == len(texts) and (sources is None or len(sources) == n_documents)
            and (len(documents) == 0 or 0 <= documents.min() and documents.max() < n_documents)
            and bool(np.all(np.diff(indptr) >= 0))
        )
        if not consistent:
            raise LmforgeError(f"{directory}: the index files do not agree with each other or with meta.json; {REBUILD}")
        return cls(
            analyzer=analyzer,
            parameters=parameters,
            vocabulary={term: term_id for term_id, term in enumerate(terms)},
            postings=Postings(indptr, documents, weights, absent, n_documents),
            ids=ids,
            texts=texts,
            average_length=average_length,
            sources=sources,
        )


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise LmforgeError(f"{directory}: no such index directory; build one with `lmforge bm25 index INPUT --out {directory}`")
    path = directory / "meta.json"
    if not path.is_file():
        raise LmforgeError(f"{directory} is not a BM25 index (it has no meta.json); build one with `lmforge bm25 index`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LmforgeError(f"{path}: not valid JSON ({error}); {REBUILD}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise LmforgeError(f"{directory} is not an lmforge BM25 index (meta.json format is {found!r}); build one with `lmforge bm25 index`")
    if meta.get("version") != VERSION:
        raise LmforgeError(f"{directory}: index format version {meta.get('version')!r}, this lmforge reads {VERSION}; {REBUILD}")
    return meta
