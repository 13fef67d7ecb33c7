"""Retrieval-augmented answers measured without labels: cloze questions cut from the indexed
passages themselves (a sentence with its rarest indexed word blanked), then retrieval recall@k (is
the source passage among the top k for the question?) and the model's answer accuracy with the
retrieved passages in the prompt and without them. The gap is what retrieval buys this model."""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lmforge.retrieval import BM25Index, Passage
from lmforge.retrieval.storage import ids_at

BLANK = "____"
INSTRUCTION = "Fill in the blank (____) in the user's sentence. Answer with the missing word only."
# For a base model, which continues text rather than following instructions: one solved example.
COMPLETION_OPENING = ("Fill in the blank with the missing word.\n\n"
                      "Sentence: Water boils at one hundred degrees ____ at sea level.\nMissing word: Celsius\n\n")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
_HAN = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Cloze:
    passage: int  # the source passage's position in the index
    passage_id: object
    sentence: str
    answer: str  # the blanked word, as written in the sentence

    @property
    def question(self) -> str:
        return self.sentence.replace(self.answer, BLANK, 1)


def _sentences(text: str) -> list[str]:
    return [sentence.strip() for sentence in _SENTENCE_END.split(" ".join(text.split())) if sentence.strip()]


def _key_word(sentence: str, index: BM25Index, min_terms: int) -> str | None:
    """The sentence's rarest indexed term that it writes literally: a Latin word of 4+ letters or a
    Han word of 2+ characters (stemmed or stop-word terms do not qualify)."""
    terms = index.analyzer(sentence)
    if len(terms) < min_terms:
        return None
    best, best_frequency = None, None
    for term in dict.fromkeys(terms):
        row = index.vocabulary.get(term)
        han = bool(_HAN.search(term))
        if row is None or (len(term) < 2 if han else len(term) < 4 or not term.isalpha()):
            continue
        match = re.search(re.escape(term) if han else rf"\b{re.escape(term)}\b", sentence, re.IGNORECASE)
        frequency = int(index.postings.indptr[row + 1] - index.postings.indptr[row])
        if match and (best_frequency is None or frequency < best_frequency):
            best, best_frequency = match.group(0), frequency
    return best


def cloze_questions(index: BM25Index, count: int, seed: int = 0, min_terms: int = 8) -> list[Cloze]:
    """Up to `count` questions, one a passage, from passages drawn with `seed`."""
    order = list(range(len(index)))
    random.Random(seed).shuffle(order)
    questions = []
    for position in order:
        for sentence in _sentences(index.texts[position]):
            answer = _key_word(sentence, index, min_terms)
            if answer is not None:
                questions.append(Cloze(position, ids_at(index.ids, np.array([position]))[0], sentence, answer))
                break
        if len(questions) == count:
            break
    return questions


def chat_messages(question: Cloze) -> list[dict]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question.question}]


def completion_prompt(question: Cloze, passages: list[Passage] = ()) -> str:
    """The question as text to continue, after the retrieved passages (numbered) when there are any."""
    numbered = "".join(f"[{number}] {' '.join(passage.text.split())}\n" for number, passage in enumerate(passages, 1))
    return f"{COMPLETION_OPENING}{numbered}{chr(10) if numbered else ''}Sentence: {question.question}\nMissing word:"


def normalized(text: str) -> str:
    """Lowercase, NFKC, without leading spaces, punctuation and symbols: how answers are compared."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(character for character in text
                   if not unicodedata.category(character).startswith(("P", "S", "Z", "C")))


def is_correct(output: str, answer: str) -> bool:
    """The model's answer is right when it starts with the blanked word."""
    return normalized(output).startswith(normalized(answer))


@dataclass
class RagReport:
    questions: int
    k: int
    recall_at_k: float
    accuracy_with_retrieval: float
    accuracy_without_retrieval: float
    rows: list[dict]

    def summary(self) -> dict:
        return {"questions": self.questions, "k": self.k, "recall_at_k": self.recall_at_k,
                "accuracy_with_retrieval": self.accuracy_with_retrieval,
                "accuracy_without_retrieval": self.accuracy_without_retrieval}


def evaluate_rag(index: BM25Index, questions: list[Cloze], k: int,
                 answer: Callable[[list[Cloze], bool], list[str]]) -> RagReport:
    """Recall@k of each question's source passage, and the accuracy of `answer` (questions ->
    outputs; its flag says whether to put retrieved passages in the prompts) with and without retrieval."""
    if not questions:
        return RagReport(0, k, 0.0, 0.0, 0.0, [])
    retrieved = index.search_passages([question.question for question in questions], k)
    grounded, plain = answer(questions, True), answer(questions, False)
    rows = []
    for question, passages, with_retrieval, without in zip(questions, retrieved, grounded, plain):
        rows.append({"passage": question.passage_id, "question": question.question, "answer": question.answer,
                     "retrieved": [passage.id for passage in passages],
                     "found": any(passage.id == question.passage_id for passage in passages),
                     "with_retrieval": with_retrieval, "correct_with_retrieval": is_correct(with_retrieval, question.answer),
                     "without_retrieval": without, "correct_without_retrieval": is_correct(without, question.answer)})
    share = lambda key: sum(row[key] for row in rows) / len(rows)  # noqa: E731
    return RagReport(len(rows), k, share("found"), share("correct_with_retrieval"), share("correct_without_retrieval"), rows)
