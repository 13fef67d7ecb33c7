"""lm-evaluation-harness parity: a multiple-choice task in local JSON files, scored by lm-eval through
the "lmforge" adapter, by `score_continuations` directly, and by lm-eval's own `hf` model on the
`convert to-hf` export of the same checkpoint, gives the same log-likelihoods and accuracies."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before lm-eval imports datasets: nothing is downloaded
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

import lmforge.eval.lm_eval_adapter  # noqa: E402,F401  # registers the "lmforge" model
from lmforge.eval.scoring import score_continuations  # noqa: E402
from lmforge.interop.hf import to_hf  # noqa: E402
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint  # noqa: E402
from lmforge.model.presets import preset_config  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402

TASK = "lmforge_tiny_choice"
WORDS = "the a cat dog sat ran on under mat rug quickly slowly red blue because after".split()


def _documents(count: int) -> list[dict]:
    generator = random.Random(0)
    sentence = lambda low, high: " ".join(generator.choices(WORDS, k=generator.randint(low, high)))  # noqa: E731
    documents = []
    for _ in range(count):
        choices = [sentence(1, 6) for _ in range(generator.randint(2, 4))]
        documents.append({"question": sentence(3, 40), "choices": choices, "label": generator.randrange(len(choices))})
    return documents


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny checkpoint (a 48-token window, so long questions are cut), its HF export, and the task."""
    root = tmp_path_factory.mktemp("lm_eval")
    documents = _documents(24)
    tokenizer = train_tokenizer([" ".join(WORDS)] * 50 + [json.dumps(documents)], vocab_size=300)
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=48)
    save_checkpoint(Transformer(config), root / "checkpoint", tokenizer=root / "tokenizer.json")
    to_hf(root / "checkpoint", root / "hf")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "documents.json").write_text(json.dumps(documents), encoding="utf-8")
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'documents.json'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n",
        encoding="utf-8",
    )
    return root, documents


def _evaluate(setup, model: str, model_args: dict, batch_size: int = 4) -> tuple[dict, list[dict]]:
    root, _ = setup
    output = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], batch_size=batch_size,
                                     task_manager=TaskManager(include_path=str(root / "tasks")), log_samples=True)
    samples = sorted(output["samples"][TASK], key=lambda sample: sample["doc_id"])
    return output["results"][TASK], samples


def _log_likelihoods(samples: list[dict]) -> list[float]:
    """Every choice's log-likelihood, document after document."""
    return [float(response[0][0]) for sample in samples for response in sample["resps"]]


@pytest.fixture(scope="module")
def through_adapter(setup):
    root, _ = setup
    return _evaluate(setup, "lmforge", {"checkpoint": str(root / "checkpoint"), "dtype": "float32"})


def test_adapter_matches_score_continuations(setup, through_adapter):
    """The harness's requests, tokenized as lm-eval's causal models do (the whole text encoded, the
    context's ids split off), scored here directly: the same log-likelihoods and accuracies."""
    root, documents = setup
    results, samples = through_adapter
    tokenizer = load_tokenizer(root / "tokenizer.json")
    model = load_checkpoint(root / "checkpoint")
    requests = []
    for sample in samples:
        for context, continuation in sample["arguments"]:
            context_ids = tokenizer.encode(context)
            requests.append((context_ids, tokenizer.encode(context + continuation)[len(context_ids):]))
    assert any(len(context) + len(continuation) - 1 > 48 for context, continuation in requests)  # truncation is exercised
    scores = [score for score, _ in score_continuations(model, requests, progress=False)]
    assert _log_likelihoods(samples) == pytest.approx(scores, rel=1e-6)  # batched differently: fp32 rounding
    assert (results["acc,none"], results["acc_norm,none"]) == pytest.approx(_accuracies(samples, documents, iter(scores)))


def _accuracies(samples: list[dict], documents: list[dict], scores) -> tuple[float, float]:
    """acc (the likeliest choice is the answer) and acc_norm (the likeliest per character of the
    choice, its leading space included, as lm-eval counts)."""
    right = right_normalized = 0
    for sample in samples:
        document = documents[sample["doc_id"]]
        choice_scores = [next(scores) for _ in document["choices"]]
        per_character = [score / len(" " + choice) for score, choice in zip(choice_scores, document["choices"])]
        right += max(range(len(choice_scores)), key=choice_scores.__getitem__) == document["label"]
        right_normalized += max(range(len(per_character)), key=per_character.__getitem__) == document["label"]
    return right / len(samples), right_normalized / len(samples)


def test_adapter_results_do_not_depend_on_batch_size(setup, through_adapter):
    root, _ = setup
    results, samples = _evaluate(setup, "lmforge", {"checkpoint": str(root / "checkpoint"), "dtype": "float32"},
                                 batch_size=1)
    expected = through_adapter[0]
    assert (results["acc,none"], results["acc_norm,none"]) == (expected["acc,none"], expected["acc_norm,none"])
    assert _log_likelihoods(samples) == pytest.approx(_log_likelihoods(through_adapter[1]), rel=1e-6)


def test_hf_model_on_the_export_agrees(setup, through_adapter):
    """lm-eval's own `hf` model on `convert to-hf` output: the same accuracies, log-likelihoods within 1e-4."""
    root, _ = setup
    # The export's tokenizer_config.json names no EOS/BOS token, so `hf` must be told its prefix id.
    eos_id = load_tokenizer(root / "tokenizer.json").eos_id
    results, samples = _evaluate(setup, "hf", {"pretrained": str(root / "hf"), "dtype": "float32", "device": "cpu",
                                               "prefix_token_id": eos_id})
    ours, our_samples = through_adapter
    assert (results["acc,none"], results["acc_norm,none"]) == (ours["acc,none"], ours["acc_norm,none"])
    assert _log_likelihoods(samples) == pytest.approx(_log_likelihoods(our_samples), abs=1e-4)


def _instances(request_type: str, arguments: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=request_type, doc={}, arguments=args, idx=0) for args in arguments]


def test_rolling_loglikelihood_matches_hf(setup):
    """Texts longer than the 48-token window, scored in disjoint windows from the EOS prefix on."""
    from lm_eval.models.huggingface import HFLM

    root, documents = setup
    texts = [" ".join(document["question"] for document in documents[start:start + 6]) for start in (0, 6)] + ["cat"]
    requests = _instances("loglikelihood_rolling", [(text,) for text in texts])
    ours = lmforge.eval.lm_eval_adapter.LmforgeLM(checkpoint=str(root / "checkpoint"), dtype="float32", batch_size=3)
    assert len(ours.tok_encode(texts[0])) > 2 * 48
    eos_id = load_tokenizer(root / "tokenizer.json").eos_id
    theirs = HFLM(pretrained=str(root / "hf"), dtype="float32", device="cpu", batch_size=3, prefix_token_id=eos_id)
    assert ours.loglikelihood_rolling(requests, disable_tqdm=True) == pytest.approx(
        theirs.loglikelihood_rolling(requests, disable_tqdm=True), abs=1e-4)


def test_generate_until_stops_at_the_stop_string_or_the_token_budget(setup):
    from lmforge.infer.generate import generate_tokens

    root, _ = setup
    ours = lmforge.eval.lm_eval_adapter.LmforgeLM(checkpoint=str(root / "checkpoint"), dtype="float32")
    prompt = "Question: the cat sat on the"
    greedy = ours.tokenizer.decode(list(generate_tokens(ours.model, ours.tok_encode(prompt), 12)))
    stop = greedy[3:5]
    assert stop and stop not in greedy[:4]
    outputs = ours.generate_until(_instances("generate_until", [
        (prompt, {"until": [stop], "max_gen_toks": 12}),
        (prompt, {"until": ["never written"], "max_gen_toks": 12, "do_sample": False}),
    ]), disable_tqdm=True)
    assert outputs == [greedy[:greedy.index(stop)], greedy]
