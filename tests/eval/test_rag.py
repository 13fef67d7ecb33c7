"""`eval rag`: cloze questions come from the passages themselves, recall@k is the source passage
among BM25's top k, and answers are scored with and without the retrieved passages."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.cli import run
from lmforge.eval.rag import BLANK, cloze_questions, completion_prompt, evaluate_rag, is_correct
from lmforge.infer.grounded import Grounding
from lmforge.retrieval import BM25Index

ENGLISH = [
    "The lighthouse keeper climbed the spiral staircase every evening before sunset to light the lamp.",
    "A violinist practised scales in the conservatory while the students listened from the balcony.",
    "The glacier carved a deep valley through the mountains over many thousands of patient years.",
    "Fishermen repaired their nets on the harbour wall while seagulls circled above the wooden boats.",
    "The astronomer measured the brightness of distant galaxies with a large reflecting telescope.",
    "Bakers in the village rose before dawn to knead the dough and heat the stone ovens for bread.",
]
CHINESE = ["科学家 在 实验室 里 研究 新型 材料 的 导电 性能 和 稳定性 问题。", "农民 在 田野 里 收割 成熟 的 水稻 并 晾晒 粮食。"]


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(ENGLISH + CHINESE, ids=[f"doc{number}" for number in range(len(ENGLISH) + len(CHINESE))],
                           analyzer="jieba")


def test_questions_blank_a_rare_word_of_their_own_passage(index):
    questions = cloze_questions(index, 20, seed=3)
    assert len(questions) == len(ENGLISH) + len(CHINESE)  # one a passage
    assert questions == cloze_questions(index, 20, seed=3) and cloze_questions(index, 3, seed=4) != questions[:3]
    for question in questions:
        text = index.texts[question.passage]
        assert question.sentence in text and question.answer in question.sentence
        assert question.question.count(BLANK) == 1 and question.question.replace(BLANK, question.answer) == question.sentence
        assert question.passage_id == f"doc{question.passage}"
    assert any(re.search(r"[\u4e00-\u9fff]", question.answer) for question in questions)  # Chinese words too


def _oracle(grounding: Grounding, tokenizer):
    """Answers by finding the question's sentence in the prompt's passages (there are none without retrieval)."""
    def answer(questions: list, retrieve: bool) -> list[str]:
        outputs = []
        for question in questions:
            passages = grounding.retrieve(question.question, tokenizer) if retrieve else []
            prompt = completion_prompt(question, passages)
            before, after = question.question.split(BLANK)
            context = prompt.split("Missing word: Celsius")[1].replace(question.question, "")
            found = re.search(re.escape(before) + r"(\S+?)" + re.escape(after), context)
            outputs.append(f" {found.group(1)}." if found else "I do not know")
        return outputs
    return answer


def test_recall_and_accuracy_with_and_without_retrieval(index):
    from lmforge.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(ENGLISH + CHINESE, vocab_size=300)
    questions = cloze_questions(index, 20, seed=0)
    report = evaluate_rag(index, questions, 1, _oracle(Grounding(index, top=1, budget=10_000), tokenizer))
    found = [any(passage.id == question.passage_id for passage in passages)
             for question, passages in zip(questions, index.search_passages([q.question for q in questions], 1))]
    assert report.recall_at_k == sum(found) / len(found) > 0.5
    assert report.accuracy_with_retrieval == report.recall_at_k  # the oracle answers exactly when the source is retrieved
    assert report.accuracy_without_retrieval == 0
    assert [row["correct_with_retrieval"] for row in report.rows] == found


def test_completion_prompts_number_the_passages_before_the_question(index):
    question = cloze_questions(index, 1)[0]
    passages = index.search_passages([question.question], 2)[0]
    prompt = completion_prompt(question, passages)
    assert f"[1] {passages[0].text}" in prompt and f"[2] {passages[1].text}" in prompt
    assert prompt.endswith(f"Sentence: {question.question}\nMissing word:")
    assert "[1]" not in completion_prompt(question)


def test_answers_are_compared_without_case_space_or_punctuation():
    assert is_correct(" Lighthouse.", "lighthouse") and is_correct("导电性能", "导电")
    assert is_correct("“Glacier” it is", "glacier") and not is_correct("the glacier", "glacier")


def test_eval_rag_command(tmp_path, make_random_checkpoint, capsys):
    checkpoint = make_random_checkpoint(tmp_path, ENGLISH + CHINESE, context_length=256)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{n}", "text": text}) + "\n"
                                                 for n, text in enumerate(ENGLISH + CHINESE)), encoding="utf-8")
    assert run(["bm25", "index", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert run(["eval", "rag", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--questions", "5", "--k", "2",
                "--json", "--out", str(tmp_path / "rows.jsonl"), "--max-new-tokens", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["questions"] == 5 and summary["k"] == 2 and 0 <= summary["recall_at_k"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5 and summary["recall_at_k"] == sum(row["found"] for row in rows) / 5
    assert run(["eval", "rag", str(tmp_path / "idx"), "--checkpoint", str(checkpoint), "--questions", "2",
                "--prompt-format", "chat", "--max-new-tokens", "2"]) == 0
    assert "through its chat template" in capsys.readouterr().out
    (tmp_path / "short.txt").write_text("Too short.\nAlso short.\n", encoding="utf-8")
    assert run(["bm25", "index", str(tmp_path / "short.txt"), "--out", str(tmp_path / "short-idx")]) == 0
    assert run(["eval", "rag", str(tmp_path / "short-idx"), "--checkpoint", str(checkpoint)]) == 1
    assert "no passage holds a sentence" in capsys.readouterr().err
    assert run(["eval", "rag", str(tmp_path / "missing"), "--checkpoint", str(checkpoint)]) == 1
