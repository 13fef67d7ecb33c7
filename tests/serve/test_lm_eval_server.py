"""lm-evaluation-harness's `local-completions` model through `lmforge serve` (tokenizing with the
server's /tokenize, scoring with echo + logprobs) gives the log-likelihoods of lm-eval's in-process
"lmforge" model and the accuracy of `lmforge eval tasks` on the same local task."""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

import lmforge.eval.lm_eval_adapter  # noqa: E402,F401  # registers the "lmforge" model
from lmforge.cli import run  # noqa: E402

TASK = "lmforge_served_choice"
WORDS = "the a cat dog sat ran on under mat rug quickly slowly red blue because after".split()


def _documents(count: int) -> list[dict]:
    generator = random.Random(0)
    sentence = lambda low, high: " ".join(generator.choices(WORDS, k=generator.randint(low, high)))  # noqa: E731
    documents = []
    for _ in range(count):
        choices = [sentence(1, 5) for _ in range(generator.randint(2, 4))]
        documents.append({"context": "Question: " + sentence(3, 15) + "\nAnswer:", "choices": choices,
                          "answer": generator.randrange(len(choices))})
    return documents


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_served")
    documents = _documents(20)
    (root / f"{TASK}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in documents), encoding="utf-8")
    (root / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / (TASK + '.jsonl')}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n",
        encoding="utf-8")
    return root


def _evaluate(task, model: str, model_args: dict) -> tuple[dict, list[float]]:
    output = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], batch_size=4,
                                     task_manager=TaskManager(include_path=str(task)), log_samples=True)
    samples = sorted(output["samples"][TASK], key=lambda sample: sample["doc_id"])
    return output["results"][TASK], [float(response[0][0]) for sample in samples for response in sample["resps"]]


def test_local_completions_through_the_server_equal_in_process(served, task, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", served.api_key)
    served_results, served_scores = _evaluate(task, "local-completions", {
        "base_url": served.url + "/v1/completions", "model": "tiny", "tokenizer_backend": "remote",
        "auth_token": served.api_key, "max_length": 192, "num_concurrent": 2})
    local_results, local_scores = _evaluate(task, "lmforge", {"checkpoint": str(served.checkpoint), "dtype": "float32"})
    assert served_scores == pytest.approx(local_scores, abs=1e-5)
    assert (served_results["acc,none"], served_results["acc_norm,none"]) == (local_results["acc,none"],
                                                                              local_results["acc_norm,none"])
    assert run(["eval", "tasks", str(served.checkpoint), "--task-file", str(task / f"{TASK}.jsonl"), "--precision", "fp32",
                "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["results"][TASK]
    assert (ours["acc"], ours["acc_norm"]) == pytest.approx((served_results["acc,none"], served_results["acc_norm,none"]))
