"""A zero/few-shot task as data: where its rows come from and how a row becomes the texts scored.

A definition reads like lm-evaluation-harness's task YAML: `prompt` is its `doc_to_text`, `choices`
its `doc_to_choice`, `answer` its `doc_to_target`, `prepare` its `process_docs`, and the target
and few-shot delimiters are the same fields. Three kinds cover every task here:

- `choice`: every choice is a continuation of one context (PIQA, HellaSwag, ARC, BoolQ, MMLU, ...);
- `partial`: the choice goes into the context, in place of a blank, and what follows the blank is
  the one continuation scored for every choice (Winogrande: the partial scoring of Trinh & Le
  2018, which GPT-3 and the harness use);
- `cloze`: one context and its one right continuation (LAMBADA's last word): scored for whether a
  greedy decode writes it, and for its perplexity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from lmforge.eval.tasks.sources import Locator

Kind = Literal["choice", "partial", "cloze"]


@dataclasses.dataclass(frozen=True)
class TaskData:
    """A split's rows and the files they were read from (hashed into a result, for reproducibility)."""

    rows: list[dict]
    files: tuple[Path, ...]


class Source(Protocol):
    """Where a task's rows come from: `read` returns one split, finding its files with `locator`."""

    def read(self, locator: Locator, split: str) -> TaskData: ...


@dataclasses.dataclass(frozen=True)
class Example:
    """One evaluated item: `contexts` is one context shared by every choice, or one per choice (a
    `partial` task); `continuations` are the choices, or the one continuation a `partial` or
    `cloze` task scores. `description` goes once before any few-shot examples (MMLU's subject line);
    `group` is the subset few-shot examples come from (MMLU's subject)."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    description: str = ""
    group: str = ""

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice, before any few-shot prefix or target delimiter."""
        if len(self.contexts) == 1:
            return [(self.contexts[0], continuation) for continuation in self.continuations]
        return [(context, self.continuations[0]) for context in self.contexts]

    def solved(self, target_delimiter: str) -> str:
        """The example with its right answer written out: what a few-shot prompt shows."""
        context, continuation = self.pairs[self.gold]
        return context + target_delimiter + continuation


@dataclasses.dataclass(frozen=True)
class TaskDefinition:
    """A task: its data, its prompt format, and where its few-shot examples come from.

    `fewshot_split` None means the data has no split besides the evaluated one; few-shot examples
    then come from a held-out tail of it, which is not evaluated when shots are asked for.
    """

    name: str
    source: Source
    split: str
    fewshot_split: str | None
    prompt: str  # str.format template over the prepared row: the context
    choices: str = "choices"  # the prepared row's field holding the choice texts
    answer: str = "gold"  # the prepared row's field holding the right choice's index
    continuation: str = ""  # template of the one continuation of a `partial` or `cloze` task
    prepare: Callable[[dict], dict] | None = None
    kind: Kind = "choice"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""  # template, written once before the few-shot examples
    fewshot_order: Literal["random", "first"] = "random"  # "first": the pool's first k, as MMLU's dev examples
    group: str = ""  # the prepared row's field that groups rows (few-shot examples and --limit go by group)

    @property
    def prompt_format(self) -> dict[str, str]:
        """The format, as recorded beside results: enough to tell two prompt versions apart."""
        fields = {"kind": self.kind, "prompt": self.prompt, "target_delimiter": self.target_delimiter,
                  "fewshot_delimiter": self.fewshot_delimiter}
        if self.kind == "choice":
            fields["choices"] = self.choices
        else:
            fields["continuation"] = self.continuation
        if self.description:
            fields["description"] = self.description
        return fields

    def example(self, row: dict) -> Example:
        """The row (after `prepare`) as an Example; a row the format cannot use is the data's fault."""
        row = self.prepare(row) if self.prepare else row
        try:
            description = self.description.format_map(row)
            group = str(row[self.group]) if self.group else ""
            if self.kind == "cloze":
                return Example((self.prompt.format_map(row),), (self.continuation.format_map(row),), 0, description, group)
            choices = tuple(row[self.choices])
            gold = int(row[self.answer])
            if self.kind == "partial":
                contexts = tuple(self.prompt.format_map({**row, "choice": choice}) for choice in choices)
                return Example(contexts, (self.continuation.format_map(row),), gold, description, group)
            return Example((self.prompt.format_map(row),), choices, gold, description, group)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise LmforgeError(f"task {self.name}: a row lacks what its format needs ({type(error).__name__}: {error}); "
                               f"is the data the version the task expects?") from None
