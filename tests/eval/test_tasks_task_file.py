"""A user's own task from JSONL: what it reads, and a one-line error naming the file and line for
every malformed input."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import Locator, load_task, task_prompts
from lmforge.eval.tasks.task_file import task_from_file


def _write(tmp_path, lines: list[str], name: str = "mine.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_examples_and_names_the_task_for_the_file(tmp_path):
    path = _write(tmp_path, [json.dumps({"context": "2 + 2 =", "choices": ["4", "5"], "answer": 0}), "",
                             json.dumps({"context": "The sky is", "choices": ["blue", "green", "red"], "answer": 0, "id": 7})])
    task = load_task(task_from_file(path), Locator(), 0)
    assert task.definition.name == "mine" and len(task.examples) == 2
    _, prompts = task_prompts(task, 0, seed=0)
    assert prompts == [[("2 + 2 =", " 4"), ("2 + 2 =", " 5")], [("The sky is", " blue"), ("The sky is", " green"), ("The sky is", " red")]]


@pytest.mark.parametrize(("line", "message"), [
    ('{"context": "c", "choices": ["a", "b"], "answer": 0', r"line 2: not JSON"),
    ('["c", ["a", "b"], 0]', r'line 2: expected an object \{"context"'),
    ('{"context": "c", "choices": ["a", "b"]}', r'line 2: expected an object'),
    ('{"context": 3, "choices": ["a", "b"], "answer": 0}', r'line 2: "context" must be a string, got int'),
    ('{"context": "c", "choices": "ab", "answer": 0}', r'line 2: "choices" must be a list of at least 2 non-empty strings'),
    ('{"context": "c", "choices": ["a"], "answer": 0}', r'line 2: "choices" must be a list of at least 2'),
    ('{"context": "c", "choices": ["a", ""], "answer": 0}', r'line 2: "choices" must be a list of at least 2'),
    ('{"context": "c", "choices": ["a", "b"], "answer": 2}', r'line 2: "answer" must be the index of the right choice, 0..1, got 2'),
    ('{"context": "c", "choices": ["a", "b"], "answer": true}', r'line 2: "answer" must be the index'),
    ('{"context": "c", "choices": ["a", "b"], "answer": "0"}', r'line 2: "answer" must be the index'),
])
def test_malformed_lines_name_the_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, ['{"context": "c", "choices": ["a", "b"], "answer": 1}', line])
    with pytest.raises(LmforgeError, match=message) as error:
        load_task(task_from_file(path), Locator(), 0)
    assert str(error.value).startswith(f"{path}: line 2: ") and "\n" not in str(error.value)


def test_empty_missing_and_binary_files(tmp_path):
    with pytest.raises(LmforgeError, match="holds no examples"):
        load_task(task_from_file(_write(tmp_path, [""])), Locator(), 0)
    with pytest.raises(LmforgeError, match="--task-file .*absent.jsonl does not exist"):
        load_task(task_from_file(tmp_path / "absent.jsonl"), Locator(), 0)
    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(b'{"context": "c", "choices": ["a", "b"], "answer": 0}\n{"context": "caf\xe9"}\n')
    with pytest.raises(LmforgeError, match="latin1.jsonl: line 2: not UTF-8"):
        load_task(task_from_file(binary), Locator(), 0)
