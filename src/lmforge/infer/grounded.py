"""Answers grounded in the user's documents: the top BM25 passages for a question go into the
prompt numbered [1]…[k], within a token budget, and the answer's citations are checked against
them — a number that was not retrieved is marked invalid, and an answer citing no retrieved
passage is `grounded: false`. The check is deterministic: it reads the numbers, not the meaning."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.retrieval import BM25Index, Passage
from lmforge.tokenizer import Tokenizer

INSTRUCTION = ("Answer the question from the numbered passages below. Cite each passage you use by its number in "
               "brackets, like [1]. If the passages do not hold the answer, say so.")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Grounding:
    index: BM25Index
    top: int = 4
    budget: int = 1024  # tokens the passages may take in the prompt

    @classmethod
    def open(cls, directory: str | Path, top: int = 4, budget: int = 1024) -> Grounding:
        """The index at `directory`, queried with the analyzer it was built with (stored with it)."""
        index = BM25Index.load(directory)
        if len(index) == 0:
            raise LmforgeError(f"{directory}: the BM25 index holds no passages; index some documents with `lmforge bm25 index`")
        return cls(index, top, budget)

    def retrieve(self, question: str, tokenizer: Tokenizer) -> list[Passage]:
        """The best passages for `question` that fit the token budget together (at least the first, cut to fit)."""
        chosen, used = [], 0
        for passage in self.index.search_passages([question], self.top)[0]:
            length = len(tokenizer.encode(passage.text, allowed_special=False))
            if used + length > self.budget:
                if not chosen:
                    chosen.append(_cut(passage, tokenizer, self.budget))
                break
            chosen.append(passage)
            used += length
        return chosen

    def prepare(self, messages: list[dict], tokenizer: Tokenizer,
                fits: Callable[[list[dict]], bool] = lambda messages: True) -> tuple[list[dict], list[Passage]]:
        """`messages` with the last (user) turn holding the instruction and the retrieved passages:
        as many of the best as `fits` accepts (the prompt must leave the model room to answer)."""
        question = messages[-1]["content"]
        passages = self.retrieve(question, tokenizer)
        for count in range(len(passages), 0, -1):
            grounded = [*messages[:-1], {"role": "user", "content": grounded_prompt(question, passages[:count])}]
            if fits(grounded):
                return grounded, passages[:count]
        return messages, []

    @staticmethod
    def cite(answer: str, passages: list[Passage]) -> dict:
        return citations(answer, passages)


def grounded_prompt(question: str, passages: list[Passage]) -> str:
    numbered = "\n\n".join(f"[{number}] {' '.join(passage.text.split())}" for number, passage in enumerate(passages, 1))
    return f"{INSTRUCTION}\n\n{numbered}\n\nQuestion: {question}"


def citations(answer: str, passages: list[Passage]) -> dict:
    """{"citations": [{number, id, document, span, score}], "invalid_citations": [numbers cited but
    not retrieved], "grounded": whether any retrieved passage is cited}."""
    cited = []
    for match in _CITATION.finditer(answer):
        cited += [int(number) for number in match.group(1).split(",")]
    valid = sorted({number for number in cited if 1 <= number <= len(passages)})
    invalid = sorted({number for number in cited if not 1 <= number <= len(passages)})
    return {
        "citations": [{"number": number, "id": passages[number - 1].id, "document": passages[number - 1].document,
                       "span": list(passages[number - 1].span),
                       "score": passages[number - 1].score} for number in valid],
        "invalid_citations": invalid,
        "grounded": bool(valid),
    }


def _cut(passage: Passage, tokenizer: Tokenizer, budget: int) -> Passage:
    """The passage's opening `budget` tokens (a passage longer than the whole budget)."""
    from dataclasses import replace

    text = tokenizer.decode(tokenizer.encode(passage.text, allowed_special=False)[:budget]).rstrip("\ufffd")
    return replace(passage, text=text, span=(passage.span[0], passage.span[0] + len(text)))
