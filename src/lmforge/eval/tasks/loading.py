"""A task's evaluated examples and its few-shot pool, kept apart: a few-shot example is never one
that is evaluated.

The pool is the task's own few-shot split where it has one (MMLU's dev questions; the Chinese
tasks' train split). A task whose data has only the evaluated split holds out its last
`held_out_size` examples as the pool when shots are asked for; with no shots every example is
evaluated, so zero-shot figures cover the whole split.
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.definition import Example, TaskDefinition
from lmforge.eval.tasks.sources import Locator, files_sha256

HELD_OUT_MAX = 100  # examples held out as the few-shot pool: a tenth of the split, at most this many


def held_out_size(examples: int) -> int:
    return min(HELD_OUT_MAX, examples // 10)


@dataclasses.dataclass(frozen=True)
class LoadedTask:
    definition: TaskDefinition
    examples: list[Example]  # evaluated, in the split's order
    pool: list[Example]  # few-shot examples (empty without shots)
    fewshot_source: str  # where the pool came from, in words
    data_sha256: str  # of the files the examples and the pool were read from


def _examples(definition: TaskDefinition, rows: list[dict], split: str) -> list[Example]:
    examples = [definition.example(row) for row in rows]
    for number, example in enumerate(examples):
        if not 0 <= example.gold < len(example.pairs):
            raise LmforgeError(f"task {definition.name}: {split} row {number} names answer {example.gold}, "
                               f"but it has {len(example.pairs)} choices")
    return examples


def load_task(definition: TaskDefinition, locator: Locator, num_fewshot: int) -> LoadedTask:
    """Read the task's data and split it into evaluated examples and the few-shot pool; refuse more
    shots than the pool holds (per group for a grouped task such as MMLU)."""
    data = definition.source.read(locator, definition.split)
    examples = _examples(definition, data.rows, definition.split)
    if not examples:
        raise LmforgeError(f"task {definition.name}: its {definition.split} split holds no examples")
    files = data.files
    pool: list[Example] = []
    if definition.fewshot_split is not None:
        source = f"the {definition.fewshot_split} split"
        if num_fewshot > 0:
            fewshot_data = definition.source.read(locator, definition.fewshot_split)
            pool = _examples(definition, fewshot_data.rows, definition.fewshot_split)
            files += fewshot_data.files
    else:
        held = held_out_size(len(examples))
        source = f"the last {held} {definition.split} examples, held out (not evaluated) when shots are asked for"
        if num_fewshot > 0:
            examples, pool = examples[:len(examples) - held], examples[len(examples) - held:]
    if num_fewshot > 0:
        _check_pool(definition, examples, pool, num_fewshot, source)
    return LoadedTask(definition, examples, pool, source, files_sha256(files))


def _check_pool(definition: TaskDefinition, examples: list[Example], pool: list[Example], num_fewshot: int,
                source: str) -> None:
    sizes = {group: 0 for group in dict.fromkeys(example.group for example in examples)}
    for example in pool:
        if example.group in sizes:
            sizes[example.group] += 1
    group, smallest = min(sizes.items(), key=lambda item: item[1])
    if num_fewshot > smallest:
        where = f" for {definition.group} {group}" if definition.group else ""
        raise LmforgeError(f"--num-fewshot {num_fewshot} is more than the {smallest} few-shot examples task "
                           f"{definition.name} has{where} ({source}); ask for at most {smallest}")


def limited(task: LoadedTask, limit: int | None) -> tuple[list[int], list[Example]]:
    """The first `limit` examples (of each group, as the harness limits each MMLU subject), with
    their positions in the split (which seed their few-shot draws)."""
    if limit is None:
        return list(range(len(task.examples))), task.examples
    taken: dict[str, int] = {}
    chosen = []
    for index, example in enumerate(task.examples):
        if taken.get(example.group, 0) < limit:
            taken[example.group] = taken.get(example.group, 0) + 1
            chosen.append(index)
    return chosen, [task.examples[index] for index in chosen]
