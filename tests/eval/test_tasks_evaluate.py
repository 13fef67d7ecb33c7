"""A task on a tiny random model: its log-likelihoods and metrics equal a naive computation (one
unbatched forward per choice), do not depend on the batch size, and long inputs are cut as stated;
token requests are encoded as lm-evaluation-harness encodes them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import Locator, TaskData, TaskDefinition, encode_requests, evaluate_task, load_task, task_prompts
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

CONTEXT = 32
QUESTIONS = ["Which animal barks?", "What colour is the sky?", "How many legs has a spider?", "Where do fish live?",
             "What do bees make?", "Which season is coldest?", "What is frozen water?", "Which planet is red?"]
ANSWERS = ["a dog", "blue", "eight", "in water", "honey", "winter", "ice", "Mars", "a cat and a bird", "green"]


@dataclasses.dataclass(frozen=True)
class Rows:
    splits: dict

    def read(self, locator, split: str) -> TaskData:
        return TaskData(self.splits[split], ())


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([*QUESTIONS, *ANSWERS] * 20, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=CONTEXT)
    return Transformer(config).eval()


def _choice_task(kind: str = "choice") -> TaskDefinition:
    rows = [{"question": question, "choices": [ANSWERS[(index + offset) % len(ANSWERS)] for offset in range(index % 3 + 2)],
             "gold": index % 2} for index, question in enumerate(QUESTIONS)]
    if kind == "partial":
        return TaskDefinition("partial", Rows({"validation": rows}), "validation", None,
                              prompt="{question} It is {choice}", continuation="said the teacher.", kind="partial")
    if kind == "cloze":
        rows = [{"question": question, "answer": ANSWERS[index]} for index, question in enumerate(QUESTIONS)]
        return TaskDefinition("cloze", Rows({"validation": rows}), "validation", None,
                              prompt="Q: {question} A:", continuation=" {answer}", kind="cloze")
    return TaskDefinition("toy", Rows({"validation": rows}), "validation", None, prompt="Q: {question}\nA:")


def _naive(model: Transformer, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """One unbatched forward over the request, its context cut from the left to fit the window."""
    whole = (context + continuation)[-(model.config.context_length + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0, -len(continuation):].double()
    targets = torch.tensor(continuation)
    scores = logits.log_softmax(-1).gather(1, targets[:, None])
    return float(scores.sum()), bool((logits.argmax(-1) == targets).all())


def _argmax(values):
    return max(range(len(values)), key=lambda index: (values[index], -index))


@pytest.mark.parametrize("kind", ["choice", "partial", "cloze"])
def test_loglikelihoods_and_metrics_equal_a_naive_computation(model, tokenizer, kind):
    task = load_task(_choice_task(kind), Locator(), 0)
    result = evaluate_task(model, tokenizer, task, batch_size=3, progress=False)
    examples, prompts = task_prompts(task, 0, seed=1234)
    naive = [[_naive(model, *request) for request in encode_requests(tokenizer, pairs, None)] for pairs in prompts]
    for ours, theirs in zip(result.loglikelihoods, naive):
        assert ours == pytest.approx([score for score, _ in theirs], abs=1e-4)
    golds = [example.gold for example in examples]
    if kind == "cloze":
        assert result.metrics["acc"] == sum(scores[0][1] for scores in naive) / len(naive)
        mean_loglikelihood = sum(scores[0][0] for scores in naive) / len(naive)
        assert result.metrics["perplexity"] == pytest.approx(math.exp(-mean_loglikelihood), rel=1e-4)
        return
    lls = [[score for score, _ in scores] for scores in naive]
    assert result.metrics["acc"] == sum(_argmax(scores) == gold for scores, gold in zip(lls, golds)) / len(golds)
    if kind == "partial":
        assert "acc_norm" not in result.metrics
        return
    characters = [[len(choice) for choice in example.continuations] for example in examples]
    tokens = [[len(request[1]) for request in encode_requests(tokenizer, pairs, None)] for pairs in prompts]
    for name, lengths in (("acc_norm", characters), ("acc_norm_tokens", tokens)):
        hits = [_argmax([score / size for score, size in zip(scores, sizes)]) == gold
                for scores, sizes, gold in zip(lls, lengths, golds)]
        assert result.metrics[name] == sum(hits) / len(hits)
    assert result.n == len(QUESTIONS) and result.truncated == 0


def test_batch_size_does_not_change_the_results(model, tokenizer):
    task = load_task(_choice_task(), Locator(), 0)
    one = evaluate_task(model, tokenizer, task, batch_size=1, progress=False)
    many = evaluate_task(model, tokenizer, task, batch_size=32, progress=False)
    assert one.metrics == many.metrics
    for first, second in zip(one.loglikelihoods, many.loglikelihoods):
        assert first == pytest.approx(second, abs=1e-5)


def test_contexts_too_long_are_cut_from_the_left_and_counted(model, tokenizer):
    definition = dataclasses.replace(_choice_task(), prompt="Q: {question} " * 6 + "\nA:")
    long = load_task(definition, Locator(), 0)
    result = evaluate_task(model, tokenizer, long, progress=False)
    _, prompts = task_prompts(long, 0, seed=1234)
    requests = [request for pairs in prompts for request in encode_requests(tokenizer, pairs, None)]
    assert result.truncated == sum(len(context) + len(continuation) - 1 > CONTEXT for context, continuation in requests) > 0
    flat = [score for scores in result.loglikelihoods for score in scores]
    assert flat == pytest.approx([_naive(model, *request)[0] for request in requests], abs=1e-4)


def test_a_continuation_longer_than_the_window_is_scored_in_pieces(model, tokenizer):
    long_answer = " ".join(ANSWERS * 3)
    rows = [{"question": QUESTIONS[0], "choices": [long_answer, "a dog"], "gold": 1}]
    definition = TaskDefinition("long", Rows({"validation": rows}), "validation", None, prompt="Q: {question}\nA:")
    task = load_task(definition, Locator(), 0)
    result = evaluate_task(model, tokenizer, task, progress=False)
    _, prompts = task_prompts(task, 0, seed=1234)
    context, continuation = encode_requests(tokenizer, prompts[0], None)[0]
    assert len(continuation) > CONTEXT
    whole, step, expected = context + continuation, CONTEXT // 2, 0.0
    with torch.no_grad():  # token p: in the piece of `step` tokens that starts at s, after as much as fits before s
        for position in range(len(context), len(whole)):
            start = len(context) + (position - len(context)) // step * step
            piece = min(step, len(whole) - start)
            left = max(0, start - (CONTEXT - piece + 1))
            assert position - left >= step
            logits = model(torch.tensor([whole[left:position]]))[0, -1].double()
            expected += float(logits.log_softmax(-1)[whole[position]])
    assert result.loglikelihoods[0][0] == pytest.approx(expected, abs=1e-4)
    assert result.truncated == 1


def test_encode_requests_is_the_harness_encoding(tokenizer):
    pairs = [("Q: Which animal barks?\nA:", " a dog"), ("It is ", "blue"), ("", "honey")]
    requests = encode_requests(tokenizer, pairs, bos_id=None)
    assert requests[0] == (tokenizer.encode("Q: Which animal barks?\nA:"),
                           tokenizer.encode("Q: Which animal barks?\nA: a dog")[len(tokenizer.encode("Q: Which animal barks?\nA:")):])
    assert requests[1][0] == tokenizer.encode("It is")  # the trailing space goes with the continuation
    assert requests[2] == ([tokenizer.eos_id], tokenizer.encode("honey"))  # an empty context starts with EOS
    with_bos = encode_requests(tokenizer, pairs, bos_id=7)
    assert all(context[0] == 7 for context, _ in with_bos)
    assert [continuation for _, continuation in with_bos] == [continuation for _, continuation in requests]
    assert with_bos[2][0] == [7]

    model_module = pytest.importorskip("lm_eval.api.model")

    class Harness:  # lm-eval's causal `_encode_pair` over the same tokenizer
        backend = "causal"

        @staticmethod
        def tok_encode(text, **_):
            return tokenizer.encode(text, allowed_special=False)

    for (context, continuation), request in zip(pairs[:2], requests[:2]):
        assert model_module.TemplateLM._encode_pair(Harness, context, continuation) == request


def test_special_token_text_is_plain_text(tokenizer):
    (context, _), = encode_requests(tokenizer, [("<|endoftext|> hi", " there")], None)
    assert tokenizer.eos_id not in context


def test_ids_beyond_the_model_vocabulary_are_refused(tokenizer):
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size // 2, context_length=CONTEXT)
    small = Transformer(config).eval()
    with pytest.raises(LmforgeError, match="the tokenizer is not the model's"):
        evaluate_task(small, tokenizer, load_task(_choice_task(), Locator(), 0), progress=False)
