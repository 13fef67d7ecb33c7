"""BM25 retrieval over the user's own documents, standalone: no torch, no model code.

`lmforge bm25 index` / `lmforge bm25 search` on the command line; from Python:

    from lmforge.retrieval import BM25Index
    index = BM25Index.build(texts)            # or BM25Index.load("idx")
    index.search("how do I reset it", k=5)    # [(id, score), ...] best first
    index.search_passages(["reset"], k=5)     # [[Passage(id, score, text, document, span), ...]]
"""

from lmforge.retrieval.chunks import Chunking
from lmforge.retrieval.index import BM25Index, Passage

__all__ = ["BM25Index", "Chunking", "Passage"]
