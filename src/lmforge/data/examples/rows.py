"""Fine-tuning examples read from JSON or JSON-lines files (optionally .gz or .zst).

A row's format is recognised by its fields, so files, and rows within a file, may mix formats:

- Alpaca `{instruction, input, output}` (optional `system`): one user turn and the reply;
- OpenAI chat `{"messages": [{"role", "content"}]}`: roles system, user, assistant;
- ShareGPT `{"conversations": [{"from", "value"}]}` (optional top-level `system`);
- prompt/completion `{"prompt", "completion"}`: plain text, no chat template;
- `{text, label}` for classification (`read_labeled`).

A `.json` file holds one top-level array of rows, a `.jsonl` file one row a line. A bad row stops
the read with `file:line: ...` (or `file: item N` inside a JSON array), naming the field and the
fix; with `on_bad_row="skip"` it is counted and the first few messages are kept for the report.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from lmforge.compressed import compression_of, open_compressed
from lmforge.errors import LmforgeError

OnBadRow = Literal["error", "skip"]
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS = {".json": "json", ".jsonl": "jsonl"}
KEPT_ERRORS = 5
SKIP_HINT = "or pass --on-bad-row skip"
EXAMPLE_FORMATS = (
    "write Alpaca (instruction, input, output), OpenAI chat (messages), ShareGPT (conversations) or prompt/completion rows"
)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; `role` is system, user or assistant."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatExample:
    """A conversation that ends with the assistant's reply; `source` is "path:line" or "path: item N"."""

    messages: tuple[Message, ...]
    source: str


@dataclass(frozen=True)
class CompletionExample:
    """Plain text in, plain text out: trained on the completion, with no chat template."""

    prompt: str
    completion: str
    source: str


@dataclass(frozen=True)
class LabeledText:
    """A text and its class, for classification fine-tuning; numeric labels are kept as their str()."""

    text: str
    label: str
    source: str


@dataclass
class ReadReport:
    """What reading found: rows kept, rows skipped (with the first few reasons) and rows per format."""

    rows: int = 0
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)


class BadRow(LmforgeError):
    """Why one row cannot become an example; the reader puts its location in front."""


Parsed = TypeVar("Parsed")


def read_examples(
    paths: Sequence[Path], *, on_bad_row: OnBadRow = "error"
) -> tuple[list[ChatExample | CompletionExample], ReadReport]:
    """Every fine-tuning example under `paths` (files or directories), in file and row order."""
    return _read(paths, _example, on_bad_row)


def read_labeled(paths: Sequence[Path], *, on_bad_row: OnBadRow = "error") -> tuple[list[LabeledText], ReadReport]:
    """Every `{text, label}` row under `paths` (files or directories), in file and row order."""
    return _read(paths, _labeled, on_bad_row)


def conversation_problem(messages: Sequence[Message]) -> str | None:
    """Why a conversation cannot be trained on, or None: it must end with the assistant's reply."""
    if not messages:
        return "the conversation is empty; give it at least a user message and the assistant's reply"
    if messages[-1].role != "assistant":
        return (f"the conversation ends with a {messages[-1].role} message; end it with the assistant's reply, "
                "which is what fine-tuning trains on")
    return None


def example_files(paths: Sequence[Path]) -> list[Path]:
    """The example files named: a directory stands for its .json/.jsonl files (any depth, sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(child for child in path.rglob("*") if child.is_file() and _format_of(child))
            if not found:
                raise LmforgeError(f"{path}: this directory holds no .json or .jsonl files (optionally .gz or .zst)")
            files += found
        elif path.is_file():
            if _format_of(path) is None:
                raise LmforgeError(f"{path}: not a .json or .jsonl file (optionally .gz or .zst); convert it or rename it")
            files.append(path)
        else:
            raise LmforgeError(f"{path}: no such file or directory")
    return files


def _format_of(path: Path) -> str | None:
    """"json" or "jsonl" from the name, under any compression suffix."""
    name = path.with_suffix("") if compression_of(path) else path
    return FORMATS.get(name.suffix.lower())


def _read(
    paths: Sequence[Path], parse: Callable[[Any, str], tuple[str, Parsed]], on_bad_row: OnBadRow, keep_bad: bool = False
) -> tuple[list[Parsed], ReadReport]:
    """Parsed rows in order; with `keep_bad`, a skipped row leaves None in its place."""
    if on_bad_row not in ("error", "skip"):
        raise LmforgeError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    examples: list[Parsed] = []
    report = ReadReport()
    for path in example_files(paths):
        for location, record in _records(path):
            try:
                if isinstance(record, BadRow):
                    raise record
                format_name, example = parse(record, location)
            except BadRow as error:
                message = f"{location}: {error}"
                if on_bad_row == "error":
                    raise LmforgeError(f"{message}; {SKIP_HINT}") from None
                report.skipped += 1
                if len(report.first_errors) < KEPT_ERRORS:
                    report.first_errors.append(message)
                if keep_bad:
                    examples.append(None)
                continue
            examples.append(example)
            report.rows += 1
            report.formats[format_name] += 1
    return examples, report


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed row) for each row of the file; a row that is not JSON comes as a `BadRow`."""
    if _format_of(path) == "jsonl":
        with open_compressed(path) as handle:
            for number, raw in enumerate(handle, start=1):
                location = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8-sig")  # -sig: a byte-order mark some editors write
                except UnicodeDecodeError:
                    yield location, BadRow("not valid UTF-8 text; convert the file to UTF-8")
                    continue
                if not line.strip():
                    continue
                try:
                    yield location, json.loads(line)
                except json.JSONDecodeError as error:
                    yield location, BadRow(f"not valid JSON ({error.msg} at column {error.colno})")
        return
    with open_compressed(path) as handle:
        data = handle.read()
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        yield f"{path}:{line}", BadRow("not valid UTF-8 text; convert the file to UTF-8")
        return
    except json.JSONDecodeError as error:
        yield f"{path}:{error.lineno}", BadRow(
            f"not valid JSON ({error.msg} at column {error.colno}); if the file holds one row a line, name it .jsonl"
        )
        return
    if not isinstance(document, list):
        yield f"{path}:1", BadRow(
            f"expected a top-level array of rows, got {_json_type(document)}; "
            "wrap the rows in [...] or write one a line as .jsonl"
        )
        return
    for number, record in enumerate(document, start=1):
        yield f"{path}: item {number}", record


def _example(record: Any, source: str) -> tuple[str, ChatExample | CompletionExample]:
    """The row as an example, its format recognised by its fields."""
    _require_object(record)
    if "messages" in record:
        return "openai", ChatExample(_conversation(record["messages"], "messages", "role", "content", ROLES, None), source)
    if "conversations" in record:
        system = _string(record, "system", optional=True)
        messages = _conversation(record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES, system)
        return "sharegpt", ChatExample(messages, source)
    if "instruction" in record:
        system = _string(record, "system", optional=True)
        user = _string(record, "instruction")
        extra = _string(record, "input", optional=True)
        if extra:
            user += "\n\n" + extra
        messages = [Message("system", system)] if system else []
        messages += [Message("user", user), Message("assistant", _string(record, "output"))]
        return "alpaca", ChatExample(tuple(messages), source)
    if "prompt" in record:
        return "prompt/completion", CompletionExample(_string(record, "prompt"), _string(record, "completion"), source)
    raise BadRow(f"not a fine-tuning example (fields: {_fields(record)}); {EXAMPLE_FORMATS}")


def _labeled(record: Any, source: str) -> tuple[str, LabeledText]:
    _require_object(record)
    if "text" not in record or "label" not in record:
        raise BadRow(f"a classification row needs fields text and label (fields: {_fields(record)}); "
                     'write {"text": ..., "label": ...}')
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
        raise BadRow(f"field 'label' must be a string or a number, got {_json_type(label)}")
    return "classification", LabeledText(_string(record, "text"), str(label), source)


def _conversation(
    items: Any, name: str, role_key: str, content_key: str, roles: dict[str, str], system: str | None,
    *, ends_with_reply: bool = True,
) -> tuple[Message, ...]:
    """An array of turns as messages (`system`, when given, first), with each role mapped to ours;
    one that must end with the assistant's reply is checked for it."""
    if not isinstance(items, list):
        raise BadRow(f"field {name!r} must be an array of turns, got {_json_type(items)}")
    messages = [Message("system", system)] if system else []
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise BadRow(f"{where} must be an object with {role_key!r} and {content_key!r}, got {_json_type(item)}")
        role = _string(item, role_key, f"{where}.{role_key}")
        if role not in roles:
            raise BadRow(f"{where}.{role_key} is {role!r}, not a known role; use one of {', '.join(roles)}")
        if roles[role] == "system" and messages:
            raise BadRow(f"{where} is a system message after the conversation began; a system message may only come first")
        messages.append(Message(roles[role], _string(item, content_key, f"{where}.{content_key}")))
    problem = conversation_problem(messages) if ends_with_reply else None
    if problem:
        raise BadRow(f"field {name!r}: {problem}")
    return tuple(messages)


def _string(container: dict, key: str, name: str | None = None, *, optional: bool = False) -> str:
    """`container[key]` as a string; an optional field that is absent or null reads as ""."""
    name = name or key
    value = container.get(key)
    if value is None:
        if optional:
            return ""
        present = "is null" if key in container else f"is missing (fields: {_fields(container)})"
        raise BadRow(f"field {name!r} {present}; give it a string")
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {_json_type(value)}")
    return value


def _require_object(record: Any) -> None:
    if not isinstance(record, dict):
        raise BadRow(f"expected a JSON object, got {_json_type(record)}")


def _fields(record: dict) -> str:
    names = list(record)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the person who wrote the file knows it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)
