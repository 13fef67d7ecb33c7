"""One task on one model: prompts -> token requests -> the scoring engine -> metrics."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.eval.scoring import score_continuations, truncated_count
from lmforge.eval.tasks.definition import Example
from lmforge.eval.tasks.loading import LoadedTask, limited
from lmforge.eval.tasks.metrics import choice_metrics, cloze_metrics
from lmforge.eval.tasks.prompts import fewshot_examples, render
from lmforge.eval.tasks.requests import encode_requests
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TaskResult:
    name: str
    metrics: dict[str, float | None]
    n: int  # examples evaluated
    num_fewshot: int
    requests: int  # (context, continuation) pairs scored
    truncated: int  # of them, how many did not fit the model's window: context cut from the left (see `_score`)
    requests_sha256: str  # of the prompt strings scored: equal digests, equal prompts
    loglikelihoods: list[list[float]]  # per example, per choice (one for a cloze task)

    def to_dict(self) -> dict:
        return {**self.metrics, "n": self.n, "num_fewshot": self.num_fewshot, "requests": self.requests,
                "truncated": self.truncated}


def task_prompts(task: LoadedTask, num_fewshot: int, seed: int,
                 limit: int | None = None) -> tuple[list[Example], list[list[tuple[str, str]]]]:
    """The evaluated examples and their (context, continuation) strings, one pair per choice."""
    definition = task.definition
    indices, examples = limited(task, limit)
    return examples, [render(definition, example, fewshot_examples(definition, task.pool, example, index, num_fewshot, seed))
                      for index, example in zip(indices, examples)]


def evaluate_task(model: Transformer, tokenizer: Tokenizer, task: LoadedTask, *, num_fewshot: int = 0,
                  limit: int | None = None, seed: int = 1234, batch_size: int = 16, bos_id: int | None = None,
                  autocast_dtype: torch.dtype | None = None, progress: bool = True) -> TaskResult:
    """Score every choice of every example (the first `limit` of them) and compute the task's metrics."""
    definition = task.definition
    examples, prompts = task_prompts(task, num_fewshot, seed, limit)
    flat = [pair for pairs in prompts for pair in pairs]
    requests = encode_requests(tokenizer, flat, bos_id)
    _check_requests(definition.name, flat, requests, model.config.vocab_size)
    scores = _score(model, requests, batch_size=batch_size, autocast_dtype=autocast_dtype, progress=progress,
                    description=definition.name)
    loglikelihoods, greedy, token_counts, offset = [], [], [], 0
    for pairs in prompts:
        chunk = slice(offset, offset + len(pairs))
        loglikelihoods.append([score for score, _ in scores[chunk]])
        greedy.append([hit for _, hit in scores[chunk]])
        token_counts.append([len(continuation) for _, continuation in requests[chunk]])
        offset += len(pairs)
    if definition.kind == "cloze":
        metrics = cloze_metrics([values[0] for values in loglikelihoods], [hits[0] for hits in greedy])
    elif definition.kind == "partial":  # one continuation for every choice: length normalisation changes nothing
        metrics = choice_metrics([example.gold for example in examples], loglikelihoods)
    else:
        characters = [[len(continuation) for continuation in example.continuations] for example in examples]
        metrics = choice_metrics([example.gold for example in examples], loglikelihoods, characters, token_counts)
    digest = hashlib.sha256(json.dumps(flat, ensure_ascii=False).encode("utf-8")).hexdigest()
    return TaskResult(definition.name, metrics, len(examples), num_fewshot, len(requests),
                      truncated_count(requests, model.config.context_length), digest, loglikelihoods)


def _score(model: Transformer, requests: Sequence[tuple[list[int], list[int]]], **options) -> list[tuple[float, bool]]:
    """`score_continuations`, also for a continuation longer than the model's window (a long choice
    on a small model): it is scored in pieces of half the window, each after as much of the text
    before it as fits, so every token of it is still predicted from at least half a window."""
    window = model.config.context_length
    step = max(1, window // 2)
    pieces, owners = [], []
    for index, (context, continuation) in enumerate(requests):
        if len(continuation) <= window:
            pieces.append((context, continuation))
            owners.append(index)
            continue
        whole = context + continuation
        for start in range(len(context), len(whole), step):
            pieces.append((whole[:start], whole[start:start + step]))
            owners.append(index)
    scores = [(0.0, True)] * len(requests)
    for owner, (score, greedy) in zip(owners, score_continuations(model, pieces, **options)):
        scores[owner] = (scores[owner][0] + score, scores[owner][1] and greedy)
    return scores


def _check_requests(name: str, pairs: Sequence[tuple[str, str]], requests: Sequence[tuple[list[int], list[int]]],
                    vocab_size: int) -> None:
    for (context, continuation), (_, continuation_ids) in zip(pairs, requests):
        if not continuation_ids:
            raise LmforgeError(f"task {name}: the continuation {continuation!r} encodes to no token of its own after "
                               f"{context[-40:]!r} (the tokenizer merges it into the context)")
    largest = max(max(context + continuation) for context, continuation in requests)
    if largest >= vocab_size:
        raise LmforgeError(f"task {name}: the checkpoint's tokenizer.json gives token id {largest}, but the model has "
                           f"{vocab_size} ids; the tokenizer is not the model's")
