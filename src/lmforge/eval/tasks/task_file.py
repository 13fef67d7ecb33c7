"""A user's own multiple-choice task: a JSONL file, one {"context", "choices", "answer"} object a line.

Each choice is scored as a continuation of the context after one space (the harness's default target
delimiter); `answer` is the index of the right choice. The task is named for the file's stem.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.definition import TaskData, TaskDefinition
from lmforge.eval.tasks.sources import Locator

FILE_SPLIT = "file"
LINE_FORMAT = '{"context": "...", "choices": ["...", "..."], "answer": 0}'


def _checked(row: object, where: str) -> dict:
    if not isinstance(row, dict) or not {"context", "choices", "answer"} <= set(row):
        raise LmforgeError(f"{where}: expected an object {LINE_FORMAT}")
    context, choices, answer = row["context"], row["choices"], row["answer"]
    if not isinstance(context, str):
        raise LmforgeError(f"{where}: \"context\" must be a string, got {type(context).__name__}")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(choice, str) and choice for choice in choices):
        raise LmforgeError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise LmforgeError(f"{where}: \"answer\" must be the index of the right choice, 0..{len(choices) - 1}, got {answer!r}")
    return {"context": context, "choices": choices, "answer": answer}


@dataclasses.dataclass(frozen=True)
class JsonlFile:
    path: Path

    def read(self, locator: Locator, split: str) -> TaskData:
        if not self.path.is_file():
            raise LmforgeError(f"--task-file {self.path} does not exist")
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[:error.start].count(b"\n") + 1
            raise LmforgeError(f"{self.path}: line {line}: not UTF-8; convert the file to UTF-8") from None
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{self.path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise LmforgeError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
            rows.append(_checked(row, where))
        if not rows:
            raise LmforgeError(f"{self.path} holds no examples; write one JSON object a line: {LINE_FORMAT}")
        return TaskData(rows, (self.path,))


def task_from_file(path: Path) -> TaskDefinition:
    return TaskDefinition(path.stem, JsonlFile(path), FILE_SPLIT, None,
                          prompt="{context}", answer="answer")
