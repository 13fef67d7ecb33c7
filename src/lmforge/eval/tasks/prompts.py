"""Prompts as the harness writes them: the description, then each few-shot example solved and
followed by the few-shot delimiter, then the example; each choice is scored after the target
delimiter. Text only here — tokens are `requests.py`'s business.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lmforge.eval.tasks.definition import Example, TaskDefinition


def fewshot_examples(definition: TaskDefinition, pool: Sequence[Example], example: Example, index: int,
                     num_fewshot: int, seed: int) -> list[Example]:
    """The shots for the example at position `index` of its split: drawn from the pool (of the
    example's group) by a generator seeded with (seed, index), so an example gets the same shots
    whatever --limit or the other tasks are; or the pool's first k for a task that says so (MMLU)."""
    if num_fewshot == 0:
        return []
    candidates = [shot for shot in pool if shot.group == example.group] if definition.group else list(pool)
    if definition.fewshot_order == "first":
        return candidates[:num_fewshot]
    return random.Random(f"{seed}:{index}").sample(candidates, num_fewshot)


def render(definition: TaskDefinition, example: Example, shots: Sequence[Example]) -> list[tuple[str, str]]:
    """(context, continuation) strings, one pair per choice, in choice order.

    A cloze target is scored as written, without the target delimiter, which only joins a solved
    few-shot example: the harness's loglikelihood tasks do the same (LAMBADA's target starts with
    its space, so its few-shot examples show two).
    """
    prefix = example.description + "".join(
        shot.solved(definition.target_delimiter) + definition.fewshot_delimiter for shot in shots)
    delimiter = "" if definition.kind == "cloze" else definition.target_delimiter
    return [(prefix + context, delimiter + continuation) for context, continuation in example.pairs]
