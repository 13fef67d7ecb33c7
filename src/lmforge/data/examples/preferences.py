"""Preference pairs: a prompt, a chosen and a rejected response, for reward models and DPO.

Rows (JSON or JSON lines, optionally compressed, read like the fine-tuning examples):

- `{prompt, chosen, rejected}` with plain-text strings: the prompt and a response are tokenized
  apart (the response gets the tokenizer's end-of-text id), with no chat template;
- the same with `prompt` a list of chat messages `[{role, content}]` and each response a string,
  one assistant message `{role, content}`, or a list holding it: rendered with the chat template;
- llamafactory's `{conversations: [{from, value}], chosen: {from, value}, rejected: {from, value}}`
  (`dpo_en_demo.json`), with an optional top-level `system`.

A chat pair's prompt is the conversation rendered with the generation prompt; its response is
what rendering the conversation with the reply adds after that (the reply and the end-of-turn
marker), so only response tokens are trained or scored. Prompt and response are tokenized apart,
as TRL does. A prompt longer than `max_prompt_tokens` keeps its last tokens; a response is cut to
what fits in the context. Pairs whose responses are identical (as written, or after cutting) are
dropped and counted — they carry no preference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.examples.batches import IGNORE, EpochOrder, _RowSource
from lmforge.data.examples.chat_template import render_chat
from lmforge.data.examples.rows import (
    ROLES,
    SHAREGPT_ROLES,
    BadRow,
    Message,
    OnBadRow,
    ReadReport,
    _conversation,
    _fields,
    _json_type,
    _read,
    _require_object,
    _string,
)
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

PAIR_FORMATS = ('write {"prompt", "chosen", "rejected"} rows (strings, or chat messages as the prompt), '
                "or llamafactory's {conversations, chosen, rejected}")


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt (plain text, or chat messages ending with a user turn) and two responses to it."""

    prompt: str | tuple[Message, ...]
    chosen: str
    rejected: str
    source: str

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True)
class TokenizedPair:
    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    source: str


@dataclass
class PairReport:
    """What tokenizing the pairs decided: pairs dropped or cut, and why."""

    identical: int = 0
    identical_after_cut: int = 0
    empty: int = 0
    prompts_cut: int = 0
    responses_cut: int = 0
    notes: list[str] = field(default_factory=list)

    def lines(self, kept: int) -> list[str]:
        lines = [f"{kept} preference pairs"]
        if self.identical:
            lines.append(f"dropped {self.identical} pair(s) whose chosen and rejected responses are identical")
        if self.identical_after_cut:
            lines.append(f"dropped {self.identical_after_cut} pair(s) whose responses are identical once cut to the context")
        if self.empty:
            lines.append(f"dropped {self.empty} pair(s) with a response left empty after truncation")
        if self.prompts_cut:
            lines.append(f"{self.prompts_cut} prompt(s) were longer than --max-prompt-tokens and kept their last tokens")
        if self.responses_cut:
            lines.append(f"{self.responses_cut} response(s) were cut to fit the context length")
        return lines


def read_preferences(paths: Sequence[Path], *, on_bad_row: OnBadRow = "error") -> tuple[list[PreferenceExample], ReadReport]:
    """Every preference pair under `paths` (files or directories), in file and row order."""
    return _read(paths, _pair, on_bad_row)


def _response(value: Any, name: str) -> str:
    """A response given as a string, an assistant message, or a list holding one assistant message."""
    if isinstance(value, list):
        if len(value) != 1:
            raise BadRow(f"field {name!r} must hold exactly one assistant message, got {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role_key, content_key = ("role", "content") if "role" in value else ("from", "value")
        role = _string(value, role_key, f"{name}.{role_key}")
        if SHAREGPT_ROLES.get(role) != "assistant":
            raise BadRow(f"{name}.{role_key} is {role!r}; a response is the assistant's")
        return _string(value, content_key, f"{name}.{content_key}")
    if isinstance(value, str):
        return value
    raise BadRow(f"field {name!r} must be a string or an assistant message, got {_json_type(value)}")


def _chat_prompt(messages: tuple[Message, ...], name: str) -> tuple[Message, ...]:
    if not messages or messages[-1].role != "user":
        raise BadRow(f"field {name!r} must end with a user message (the turn the responses answer)")
    return messages


def _pair(record: Any, source: str) -> tuple[str, PreferenceExample]:
    _require_object(record)
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if "conversations" in record and not missing:
        system = _string(record, "system", optional=True)
        messages = _conversations(record["conversations"], system)
        return "llamafactory", PreferenceExample(_chat_prompt(messages, "conversations"), _response(record["chosen"], "chosen"),
                                                 _response(record["rejected"], "rejected"), source)
    if "prompt" in record and not missing:
        prompt = record["prompt"]
        if isinstance(prompt, list):
            prompt = _chat_prompt(_messages(prompt), "prompt")
        elif not isinstance(prompt, str):
            raise BadRow(f"field 'prompt' must be a string or a list of chat messages, got {_json_type(prompt)}")
        return "prompt/chosen/rejected", PreferenceExample(prompt, _response(record["chosen"], "chosen"),
                                                           _response(record["rejected"], "rejected"), source)
    raise BadRow(f"not a preference pair (fields: {_fields(record)}); {PAIR_FORMATS}")


def _messages(items: list) -> tuple[Message, ...]:
    return _conversation(items, "prompt", "role", "content", ROLES, None, ends_with_reply=False)


def _conversations(items: Any, system: str) -> tuple[Message, ...]:
    return _conversation(items, "conversations", "from", "value", SHAREGPT_ROLES, system, ends_with_reply=False)


def tokenize_response(prompt: str | Sequence[Message], response: str, tokenizer: Tokenizer, template: str | None,
                      *, bos_token: str = "", eos_token: str = "", source: str = "") -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one response to a prompt, before any cut: plain text with the
    end-of-text id after the response, or a chat rendered by `template` (see the module)."""
    if isinstance(prompt, str):
        eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
        return tokenizer.encode(prompt), tokenizer.encode(response) + eos
    if template is None:
        raise LmforgeError(f"{source}: a chat prompt needs a chat template, and the checkpoint has none "
                           "(fine-tune it on chat examples first, or write the prompt as plain text)")
    special = {"bos_token": bos_token, "eos_token": eos_token}
    messages = [{"role": message.role, "content": message.content} for message in prompt]
    opening = render_chat(template, messages, add_generation_prompt=True, **special)
    whole = render_chat(template, [*messages, {"role": "assistant", "content": response}], add_generation_prompt=False,
                        **special)
    if not whole.startswith(opening):
        raise LmforgeError(f"{source}: the chat template's generation prompt is not where the reply begins "
                           "(rendering the reply does not start with it); use a prefix-stable template")
    encode = tokenizer.backend.encode
    return encode(opening, add_special_tokens=False).ids, encode(whole[len(opening):], add_special_tokens=False).ids


def tokenize_pairs(examples: Sequence[PreferenceExample], tokenizer: Tokenizer, template: str | None, *,
                   context_length: int, max_prompt_tokens: int | None = None, bos_token: str = "",
                   eos_token: str = "") -> tuple[list[TokenizedPair], PairReport]:
    """The pairs as token ids that fit `context_length + 1` tokens (the last id is only a target
    for DPO and the scored token for a reward model), and what was dropped or cut. Prompts keep
    their last `max_prompt_tokens` (default: half the context) tokens."""
    limit = context_length + 1
    max_prompt = context_length // 2 if max_prompt_tokens is None else max_prompt_tokens
    if not 1 <= max_prompt < limit:
        raise LmforgeError(f"--max-prompt-tokens must be between 1 and the context length {context_length}, got {max_prompt}")
    report, pairs = PairReport(), []
    for example in examples:
        if example.chosen == example.rejected:
            report.identical += 1
            continue
        special = {"bos_token": bos_token, "eos_token": eos_token, "source": example.source}
        prompt, chosen = tokenize_response(example.prompt, example.chosen, tokenizer, template, **special)
        _, rejected = tokenize_response(example.prompt, example.rejected, tokenizer, template, **special)
        if not prompt:
            raise LmforgeError(f"{example.source}: the prompt is empty; give it the text the responses answer")
        if len(prompt) > max_prompt:
            prompt = prompt[-max_prompt:]
            report.prompts_cut += 1
        room = limit - len(prompt)
        report.responses_cut += (len(chosen) > room) + (len(rejected) > room)
        chosen, rejected = chosen[:room], rejected[:room]
        if not chosen or not rejected:
            report.empty += 1
            continue
        if chosen == rejected:
            report.identical_after_cut += 1
            continue
        pairs.append(TokenizedPair(tuple(prompt), tuple(chosen), tuple(rejected), example.source))
    return pairs, report


class PairBatches(_RowSource):
    """Batches of preference pairs for the training loop, read like `ExampleBatches` (the same
    `EpochOrder`: seeded epochs, data-parallel shares, exact resumption).

    A batch of n pairs holds 2n rows, the n chosen sequences first, then the n rejected ones, each
    prompt + response right-padded to the batch's longest: `inputs` [2n, T], `targets` [2n, T]
    (the next id where it is a response token, else -100), `last` [2n] (each row's last real
    token, which a reward head scores), and, once `set_reference` has been called, `reference`
    [2n] (the reference model's log-probability of each row's response, for DPO)."""

    def __init__(self, pairs: Sequence[TokenizedPair], *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad_id: int = 0) -> None:
        self.pairs = self._rows = list(pairs)
        self.pad_id = pad_id
        self.reference: torch.Tensor | None = None
        self._order = EpochOrder(len(self.pairs), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        return self.batch_of(self._order.take(size))

    def batch_of(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of the pairs at `indices` (see the class)."""
        pairs = [self.pairs[index] for index in indices]
        rows = [(pair.prompt, pair.chosen) for pair in pairs] + [(pair.prompt, pair.rejected) for pair in pairs]
        width = max(len(prompt) + len(response) for prompt, response in rows)
        inputs = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for index, (prompt, response) in enumerate(rows):
            ids = prompt + response
            inputs[index, :len(ids)] = ids
            targets[index, len(prompt) - 1:len(ids) - 1] = response  # input i predicts id i + 1
        batch = {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets),
                 "last": torch.tensor([len(prompt) + len(response) - 1 for prompt, response in rows], dtype=torch.long)}
        if self.reference is not None:
            batch["reference"] = torch.cat([self.reference[list(indices), 0], self.reference[list(indices), 1]])
        return batch

    def in_order(self, size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(pair indices, batch) over every pair once, in order: for computing reference values."""
        for start in range(0, len(self.pairs), size):
            indices = list(range(start, min(start + size, len(self.pairs))))
            yield indices, self.batch_of(indices)

    def set_reference(self, reference: torch.Tensor) -> None:
        """[pairs, 2] reference log-probabilities (chosen, rejected) of every pair, by index."""
        if tuple(reference.shape) != (len(self.pairs), 2):
            raise ValueError(f"reference of shape {tuple(reference.shape)} for {len(self.pairs)} pairs")
        self.reference = reference


@dataclass(frozen=True)
class ScoredResponse:
    """A prompt and one response to it, for a reward model to score."""

    prompt: str | tuple[Message, ...]
    response: str
    source: str


def read_responses(paths: Sequence[Path], *, on_bad_row: OnBadRow = "error",
                   keep_bad: bool = False) -> tuple[list[ScoredResponse | None], ReadReport]:
    """Rows `{prompt, response}` (prompt as text or chat messages) or `{messages}` ending with the
    assistant's reply, in file and row order (a skipped row as None with `keep_bad`)."""
    return _read(paths, _scored, on_bad_row, keep_bad)


def _scored(record: Any, source: str) -> tuple[str, ScoredResponse]:
    _require_object(record)
    if "messages" in record:
        messages = _conversation(record["messages"], "messages", "role", "content", ROLES, None)
        return "messages", ScoredResponse(_chat_prompt(messages[:-1], "messages"), messages[-1].content, source)
    if "prompt" in record and "response" in record:
        prompt = record["prompt"]
        if isinstance(prompt, list):
            prompt = _chat_prompt(_messages(prompt), "prompt")
        elif not isinstance(prompt, str):
            raise BadRow(f"field 'prompt' must be a string or a list of chat messages, got {_json_type(prompt)}")
        return "prompt/response", ScoredResponse(prompt, _response(record["response"], "response"), source)
    raise BadRow(f"not a response to score (fields: {_fields(record)}); write {{\"prompt\", \"response\"}} or "
                 "{\"messages\"} rows")


def read_prompts(paths: Sequence[Path], *, on_bad_row: OnBadRow = "error") -> tuple[list[ScoredResponse], ReadReport]:
    """Prompts for sampling (PPO): rows `{prompt}` (text or chat messages ending with a user turn)
    or `{messages}` ending with a user turn; returned as responses-to-be (response "")."""
    return _read(paths, _prompt_row, on_bad_row)


def _prompt_row(record: Any, source: str) -> tuple[str, ScoredResponse]:
    _require_object(record)
    if "messages" in record:
        return "messages", ScoredResponse(_chat_prompt(_messages(record["messages"]), "messages"), "", source)
    if "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, list):
            prompt = _chat_prompt(_messages(prompt), "prompt")
        elif not isinstance(prompt, str) or not prompt:
            raise BadRow(f"field 'prompt' must be a non-empty string or a list of chat messages, got {_json_type(prompt)}")
        return "prompt", ScoredResponse(prompt, "", source)
    raise BadRow(f"not a prompt (fields: {_fields(record)}); write {{\"prompt\": ...}} or {{\"messages\": [...]}} rows")
