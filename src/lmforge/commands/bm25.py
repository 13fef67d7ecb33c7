"""`lmforge bm25 index` and `lmforge bm25 search`: rank the user's passages with BM25.

Light on purpose: nothing here imports torch or the model code, so both start in a fraction of a
second.
"""

from __future__ import annotations

import dataclasses
import json as json_module
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:  # the retrieval package (NumPy) is imported when a command runs, not for --help
    from lmforge.retrieval import Passage
    from lmforge.retrieval.chunks import TokenSpans

QUERY_BATCH = 1024  # queries scored together by `--queries`: fast, and memory stays bounded


def index(
    inputs: list[str] | str,
    *,
    out: str,
    text_field: str = "text",
    id_field: str = "id",
    analyzer: Literal["auto", "simple", "whitespace", "jieba", "cjk-bigram"] = "auto",
    stopwords: str = "none",
    stem: bool = False,
    variant: Literal["okapi", "lucene", "bm25+", "bm25l"] = "okapi",
    k1: float = 1.5,
    b: float = 0.75,
    k2: float = 0.0,
    epsilon: float = 0.25,
    delta: float | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int = 0,
    tokenizer: str | None = None,
    overwrite: bool = False,
) -> None:
    """Build a BM25 index of passages from text files, for `lmforge bm25 search`.

    Scores are precomputed (a sparse term x document matrix), so searching is a sparse sum. The
    index keeps the texts, its analyzer and parameters; it is written atomically. A passage is a
    whole document, or with --chunk-tokens a piece of one: passage ids are then "DOCID#K".

    Example:
        lmforge bm25 index notes.txt --out notes-idx
        lmforge bm25 index '[a.txt, b.jsonl]' --out ab-idx
        lmforge bm25 index 'manuals/*.txt' --out manuals-idx
        lmforge bm25 index faq.jsonl --text-field answer --id-field qid --out faq-idx
        lmforge bm25 index reviews.txt.gz --analyzer jieba --stopwords zh --out reviews-idx
        lmforge bm25 index docs.parquet --stopwords en --stem --variant bm25+ --out docs-idx --overwrite
        lmforge bm25 index manual.txt --chunk-tokens 256 --chunk-overlap 32 --tokenizer runs/base --out manual-idx

    Args:
        inputs: What to index: a file, a directory, a glob pattern, or a JSON list of them.
            Files: .txt (a document a line), .jsonl, .json (an array), .parquet (needs pyarrow),
            each maybe .gz. A document's id is its id field, else its 0-based line number
            ("FILE:LINE" when there are several files).
        out: Index directory to write.
        text_field: Field (column) holding the text in .jsonl / .json / .parquet.
        id_field: Field holding the document id; '' to number documents by line instead.
        analyzer: How text becomes terms: simple (lowercase, split on non-letters/digits),
            whitespace (lowercase, split on whitespace), jieba (Chinese words via jieba, Latin words
            whole), cjk-bigram (Han text as overlapping character pairs), auto (jieba if
            installed, else cjk-bigram; both equal simple on text without Han characters).
        stopwords: Stop words to drop: en, zh, none, or a file with one word a line.
        stem: Porter-stem English words (connected, connecting -> connect).
        variant: BM25 variant: okapi (rank_bm25's BM25Okapi), lucene (bm25s's default),
            bm25+ or bm25l (Lv & Zhai 2011).
        k1: Term-frequency saturation (> 0).
        b: Length normalisation, 0 (none) to 1 (full).
        k2: Query term-frequency factor; 0 counts a repeated query term once per occurrence.
        epsilon: okapi: a negative IDF becomes epsilon x the mean IDF.
        delta: bm25+ / bm25l lower bound of a present term's score (default 1.0 / 0.5).
        chunk_tokens: Cut each document into passages of at most this many of --tokenizer's tokens,
            at character boundaries; passage "DOCID#K" is the K-th (0-based) of document DOCID.
            Default: a passage is a whole document, its id the document's.
        chunk_overlap: Tokens that consecutive passages of a document share (less than --chunk-tokens).
        tokenizer: The tokenizer whose tokens --chunk-tokens counts: a tokenizer.json or a
            checkpoint directory holding one.
        overwrite: Replace an existing index at --out (a directory holding anything else is never replaced).
    """
    from lmforge.output_directory import check_output_directory
    from lmforge.retrieval.analyzers import make_analyzer
    from lmforge.retrieval.bm25 import BM25Parameters
    from lmforge.retrieval.chunks import Chunking
    from lmforge.retrieval.corpus import read_documents
    from lmforge.retrieval.index import INDEX_KIND, BM25Index

    out_path = Path(out)
    if chunk_tokens is None:
        for name, value, unset in (("--chunk-overlap", chunk_overlap, 0), ("--tokenizer", tokenizer, None)):
            if value != unset:
                raise LmforgeError(f"{name} applies only when documents are cut into passages; add --chunk-tokens N")
        chunking = token_spans = None
    elif tokenizer is None:
        raise LmforgeError("--chunk-tokens counts a model's tokens: name its tokenizer with --tokenizer "
                           "(a tokenizer.json or a checkpoint directory holding one)")
    else:
        chunking = Chunking(chunk_tokens, chunk_overlap, tokenizer)
        token_spans = _token_spans(tokenizer)
    check_output_directory(out_path, INDEX_KIND, overwrite=overwrite, option="--out")  # before the long part
    started = time.perf_counter()
    built = BM25Index.from_documents(
        read_documents([inputs] if isinstance(inputs, str) else inputs, text_field=text_field, id_field=id_field),
        analyzer=make_analyzer(analyzer, stopwords, stem),
        parameters=BM25Parameters(variant=variant, k1=k1, b=b, k2=k2, epsilon=epsilon, delta=delta),
        chunking=chunking,
        token_spans=token_spans,
        progress=True,
    )
    built.save(out_path, overwrite=overwrite)
    counted = "documents" if built.sources is None else f"passages of {len(built.sources.document_ids):,} documents"
    print(
        f"indexed {len(built):,} {counted}, {len(built.vocabulary):,} terms ({built.analyzer.name} analyzer, "
        f"{built.parameters.variant}) into {out_path} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


def _token_spans(path: str) -> TokenSpans:
    """The tokenizer at `path` as the chunker sees it: texts -> each token's character span.
    Byte-level tokens holding part of a character span that whole character."""
    from lmforge.tokenizer import load_tokenizer

    backend = load_tokenizer(path).backend

    def token_spans(texts: list[str]) -> list[list[tuple[int, int]]]:
        return [encoding.offsets for encoding in backend.encode_batch(texts, add_special_tokens=False)]

    return token_spans


def search(
    index: str,
    *,
    query: str | None = None,
    queries: str | None = None,
    k: int = 10,
    json: bool = False,
) -> None:
    """Rank the passages of a BM25 index for a query, best first.

    One --query prints a table (or, with --json, a JSON list of {"id", "score", "text",
    "document", "span"}: the passage's document id and its [start, end) characters in that
    document's text); a --queries file prints one such JSON list a line, a line a query. Ties are
    broken by document order; a query with no indexed term (or only stop words) matches nothing:
    an empty list.

    Example:
        lmforge bm25 search notes-idx --query "reset the password"
        lmforge bm25 search notes-idx --query "reset the password" --k 3 --json
        lmforge bm25 search notes-idx --queries questions.txt --k 5 > results.jsonl

    Args:
        index: Index directory written by `lmforge bm25 index`.
        query: The query text.
        queries: File with one query a line ('-' for standard input); output is JSONL.
        k: How many passages to return per query (at least 1).
        json: Print JSON instead of a table.
    """
    from lmforge.retrieval.index import BM25Index

    if (query is None) == (queries is None):
        raise LmforgeError("give exactly one of --query TEXT or --queries FILE")
    if k < 1:
        raise LmforgeError(f"--k must be at least 1, got {k}")
    loaded = BM25Index.load(index)
    if query is not None:
        passages = loaded.search_passages([query], k)[0]
        if json:
            _print_jsonl([passages])
        elif passages:
            _print_table(passages)
        elif terms := loaded.indexed_terms(query):
            print(f"no passage matches the query: its indexed terms ({', '.join(terms)}) score zero or less here, as they "
                  f"occur in half the passages or more (the {loaded.parameters.variant} IDF); the lucene variant's IDF stays positive")
        else:
            print("no passage matches the query (no query term is in the index)")
        return
    batch: list[str] = []
    for line in _query_lines(queries):
        batch.append(line)
        if len(batch) == QUERY_BATCH:
            _print_jsonl(loaded.search_passages(batch, k))
            batch = []
    if batch:
        _print_jsonl(loaded.search_passages(batch, k))


def _print_jsonl(results: list[list[Passage]]) -> None:
    """One JSON list of {"id", "score", "text", "document", "span"} a line, a line a query."""
    for passages in results:
        print(json_module.dumps([dataclasses.asdict(passage) for passage in passages], ensure_ascii=False))


def _query_lines(queries: str) -> Iterator[str]:
    if queries == "-":
        yield from (line.rstrip("\n") for line in sys.stdin)
        return
    path = Path(queries)
    if not path.is_file():
        raise LmforgeError(f"--queries {path}: no such file")
    try:
        with open(path, encoding="utf-8") as lines:
            yield from (line.rstrip("\n") for line in lines)
    except UnicodeDecodeError:
        raise LmforgeError(f"--queries {path}: not UTF-8 text; convert the file to UTF-8") from None


def _print_table(passages: list[Passage]) -> None:
    ids = [str(passage.id) for passage in passages]
    id_width = max(2, *map(len, ids))
    width = shutil.get_terminal_size((100, 24)).columns
    text_width = max(20, width - id_width - 19)
    print(f"{'rank':>4}  {'score':>9}  {'id':<{id_width}}  text")
    for rank, (passage, passage_id) in enumerate(zip(passages, ids), start=1):
        text = " ".join(passage.text.split())
        if len(text) > text_width:
            text = text[: text_width - 1] + "…"
        print(f"{rank:>4}  {passage.score:>9.4f}  {passage_id:<{id_width}}  {text}")
