"""The scoring engine equals a naive reference (one unpadded forward per request, fp64 log-softmax)
whatever the batch size, with contexts shared or not, run from a KV cache or in batch rows."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.eval import scoring
from lmforge.eval.scoring import rolling_loglikelihood, rolling_windows, score_continuations, truncated_count
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer

WINDOW = 24  # tiny-gemma's sliding window is 8: local layers see less than the whole context


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma", "tiny-gpt2"])
def model(request) -> Transformer:
    torch.manual_seed(0)
    return Transformer(dataclasses.replace(preset_config(request.param), context_length=WINDOW)).eval()


def reference(model: Transformer, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The last WINDOW + 1 tokens, one forward, the continuation's log-probabilities summed in fp64."""
    tokens = (context + continuation)[-(WINDOW + 1):]
    with torch.no_grad():
        log_probs = model(torch.tensor([tokens[:-1]]))[0, -len(continuation):].double().log_softmax(-1)
    targets = torch.tensor(continuation)
    return float(log_probs.gather(1, targets[:, None]).sum()), bool((log_probs.argmax(-1) == targets).all())


def greedy_continuation(model: Transformer, context: list[int], length: int) -> list[int]:
    tokens = list(context)
    with torch.no_grad():
        for _ in range(length):
            tokens.append(int(model(torch.tensor([tokens[-WINDOW:]]))[0, -1].argmax()))
    return tokens[len(context):]


@pytest.fixture(scope="module")
def requests(model) -> list[tuple[list[int], list[int]]]:
    """Questions with 1–4 choices each, some too long for the window, some choices the greedy decode,
    some questions with one-token answers only (read from one row)."""
    generator = random.Random(0)
    requests = []
    for question in range(14):
        context = [generator.randrange(512) for _ in range(generator.randint(1, 40))]
        for choice in range(generator.randint(1, 4)):
            length = 1 if question % 4 == 1 else generator.randint(1, 6)
            if choice == 0 and question % 3 == 0:
                requests.append((context, greedy_continuation(model, context, length)))
            else:
                requests.append((context, [generator.randrange(512) for _ in range(length)]))
    return requests


@pytest.mark.parametrize("reuse_context_tokens", [0, 10**9], ids=["from-kv-cache", "in-batch-rows"])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_scores_equal_the_reference(model, requests, batch_size, reuse_context_tokens, monkeypatch):
    monkeypatch.setattr(scoring, "REUSE_CONTEXT_TOKENS", reuse_context_tokens)
    expected = [reference(model, *request) for request in requests]
    scores = score_continuations(model, requests, batch_size=batch_size, progress=False)
    assert [score for score, _ in scores] == pytest.approx([score for score, _ in expected], rel=1e-6)
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in expected]
    assert any(greedy for _, greedy in expected)


def test_one_token_answers_share_a_row(model):
    """Four one-token answers to a question ride on the row of a longer answer: one row, every score
    as if alone."""
    requests = [([5, 6, 7], [answer]) for answer in (1, 2, 3, 4)] + [([5, 6, 7], [8, 9])]
    rows = []
    handle = model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        scores = score_continuations(model, requests, batch_size=1, progress=False)
    finally:
        handle.remove()
    assert sum(rows) == 1
    assert [score for score, _ in scores] == pytest.approx([reference(model, *request)[0] for request in requests], rel=1e-6)


def test_truncated_count(requests):
    cut = [len(context) + len(continuation) - 1 > WINDOW for context, continuation in requests]
    assert 0 < truncated_count(requests, WINDOW) == sum(cut) < len(requests)


def test_bf16_autocast_stays_close(model, requests):
    exact = score_continuations(model, requests, progress=False)
    fast = score_continuations(model, requests, progress=False, autocast_dtype=torch.bfloat16)
    assert [score for score, _ in fast] == pytest.approx([score for score, _ in exact], rel=0.05, abs=0.5)


def test_rolling_windows_are_lm_evals():
    """The example of lm-eval's `LM.loglikelihood_rolling` docstring: BOS then 0..9, window 4."""
    bos = -1
    assert rolling_windows([bos, *range(10)], 4) == [([bos], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9])]
    assert rolling_windows([bos], 4) == []


def test_rolling_loglikelihood_scores_every_token_once(model):
    tokens = [random.Random(1).randrange(512) for _ in range(3 * WINDOW + 5)]
    windows = rolling_windows(tokens, WINDOW)
    assert sum(len(continuation) for _, continuation in windows) == len(tokens) - 1
    expected = sum(reference(model, *window)[0] for window in windows)
    assert rolling_loglikelihood(model, tokens, batch_size=2) == pytest.approx(expected, rel=1e-6)


def test_bad_requests_are_refused(model):
    with pytest.raises(LmforgeError, match="at least one token"):
        score_continuations(model, [([1, 2], [])], progress=False)
    with pytest.raises(LmforgeError, match="BOS or EOS"):
        score_continuations(model, [([], [1])], progress=False)
    with pytest.raises(LmforgeError, match="does not fit"):
        score_continuations(model, [([1], [2] * (WINDOW + 1))], progress=False)
