"""Examples as token ids, with the mask of which ids are trained.

A chat's text comes from its template, and the assistant's turns are found in that text the way
any template allows: rendering the first i messages with the generation prompt and the first i+1
without it brackets turn i's characters (reply and end-of-turn token). The whole text is then
tokenized once with character offsets, and a token is trained when it overlaps an assistant turn.
This needs a template whose earlier turns render the same whatever follows ("prefix-stable");
one that is not is an error rather than a silently wrong mask.

Special-token strings inside the data are read as special tokens, as Hugging Face tokenizers do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lmforge.data.examples.chat_template import render_chat
from lmforge.data.examples.rows import ChatExample, CompletionExample, LabeledText, conversation_problem
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

TrainOn = Literal["completion", "prompt+completion", "last-turn"]
TRAIN_ON = ("completion", "prompt+completion", "last-turn")


@dataclass
class TokenizedExample:
    """Token ids and, for each, whether it is a training target (predicted from the ids before it)."""

    ids: list[int]
    supervised: list[bool]
    source: str

    @property
    def trained_tokens(self) -> int:
        """Targets the loss sees: the first id is predicted from nothing, so it never counts."""
        return sum(self.supervised[1:])


def tokenize_chat(
    example: ChatExample,
    tokenizer: Tokenizer,
    template: str,
    *,
    train_on: TrainOn = "completion",
    bos_token: str = "",
    eos_token: str = "",
) -> TokenizedExample:
    """The conversation rendered by `template` and tokenized. "completion" trains every assistant
    turn with its end-of-turn token, "last-turn" only the final one, "prompt+completion" everything."""
    _check_train_on(train_on)
    problem = conversation_problem(example.messages)
    if problem:
        raise LmforgeError(f"{example.source}: {problem}")
    messages = [{"role": message.role, "content": message.content} for message in example.messages]

    def render(count: int, add_generation_prompt: bool) -> str:
        return render_chat(template, messages[:count], add_generation_prompt=add_generation_prompt,
                           bos_token=bos_token, eos_token=eos_token)

    text = render(len(messages), False)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    if train_on == "prompt+completion":
        supervised = [True] * len(encoding.ids)
    else:
        turns = [index for index, message in enumerate(example.messages) if message.role == "assistant"]
        in_turn = bytearray(len(text))
        for start, end in _assistant_spans(render, text, turns[-1:] if train_on == "last-turn" else turns, example.source):
            in_turn[start:end] = b"\x01" * (end - start)
        supervised = [1 in in_turn[start:end] for start, end in encoding.offsets]
    return _trainable(TokenizedExample(list(encoding.ids), supervised, example.source))


def _assistant_spans(render: Callable[[int, bool], str], text: str, turns: list[int], source: str) -> list[tuple[int, int]]:
    """Character ranges of the assistant turns at message indices `turns`, without trailing whitespace."""
    spans = []
    for turn in turns:
        start = _prefix_length(render(turn, True), text, f"the first {turn} message(s) with the generation prompt", source)
        end = _prefix_length(render(turn + 1, False), text, f"the first {turn + 1} message(s)", source)
        if end < start:
            raise LmforgeError(
                f"{source}: the chat template's generation prompt is not where the assistant's turn {turn} begins "
                "(rendering that turn does not start with it); use a prefix-stable template or train_on='prompt+completion'"
            )
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return spans


def _prefix_length(rendered: str, text: str, what: str, source: str) -> int:
    if not text.startswith(rendered):
        raise LmforgeError(
            f"{source}: the chat template is not prefix-stable: rendering {what} is not the start of rendering the whole "
            "conversation, so the assistant's turns cannot be located; use a template whose earlier turns render the "
            "same whatever follows, or train_on='prompt+completion'"
        )
    return len(rendered)


def tokenize_completion(
    example: CompletionExample, tokenizer: Tokenizer, *, train_on: TrainOn = "completion"
) -> TokenizedExample:
    """Prompt ids, completion ids, then EOS (if the tokenizer has one); prompt and completion are
    tokenized separately, as TRL does. Trains the completion and EOS ("last-turn" is the same),
    or everything with "prompt+completion"."""
    _check_train_on(train_on)
    prompt = tokenizer.encode(example.prompt)
    completion = tokenizer.encode(example.completion) + ([] if tokenizer.eos_id is None else [tokenizer.eos_id])
    supervised = [train_on == "prompt+completion"] * len(prompt) + [True] * len(completion)
    return _trainable(TokenizedExample(prompt + completion, supervised, example.source))


def tokenize_examples(
    examples: Sequence[ChatExample | CompletionExample],
    tokenizer: Tokenizer,
    template: str | None,
    *,
    train_on: TrainOn = "completion",
    bos_token: str = "",
    eos_token: str = "",
) -> list[TokenizedExample]:
    """Each example tokenized by its kind: chats through `template`, prompt/completion pairs without one."""
    tokenized = []
    for example in examples:
        if isinstance(example, CompletionExample):
            tokenized.append(tokenize_completion(example, tokenizer, train_on=train_on))
        elif template is None:
            raise LmforgeError(f"{example.source}: a chat example needs a chat template, and none was given "
                               "(the checkpoint's generation.json has none): give one, e.g. ChatML")
        else:
            tokenized.append(tokenize_chat(example, tokenizer, template, train_on=train_on,
                                           bos_token=bos_token, eos_token=eos_token))
    return tokenized


def fit_context(example: TokenizedExample, context_length: int) -> tuple[TokenizedExample, bool]:
    """The example cut to its first `context_length + 1` ids (the inputs are all but the last), and
    whether it was cut; one left with nothing to train on is an error."""
    limit = context_length + 1
    if len(example.ids) <= limit:
        return example, False
    cut = TokenizedExample(example.ids[:limit], example.supervised[:limit], example.source)
    if cut.trained_tokens == 0:
        raise LmforgeError(
            f"{example.source}: none of its trained tokens is within the first {limit:,} of its {len(example.ids):,} tokens; "
            "use a longer context length, or shorten the prompt"
        )
    return cut, True


def tokenize_labeled(
    examples: Sequence[LabeledText], tokenizer: Tokenizer, labels: Sequence[str], context_length: int
) -> tuple[list[tuple[list[int], int]], int]:
    """(ids, label index) for each text, kept to its first `context_length` tokens (the head of a
    review says most), and how many texts were cut."""
    index = {label: position for position, label in enumerate(labels)}
    if not labels or len(index) != len(labels):
        raise LmforgeError(f"classification needs a list of distinct labels, got {list(labels)!r}")
    known = ", ".join(map(repr, labels))
    rows, truncated = [], 0
    for example, ids in zip(examples, tokenizer.encode_batch([example.text for example in examples])):
        if example.label not in index:
            raise LmforgeError(f"{example.source}: label {example.label!r} is not one of the known labels ({known}); "
                               "fix the row or add the label")
        if not ids:
            raise LmforgeError(f"{example.source}: the text is empty; give it a text or remove the row")
        truncated += len(ids) > context_length
        rows.append((ids[:context_length], index[example.label]))
    return rows, truncated


def _trainable(example: TokenizedExample) -> TokenizedExample:
    if example.trained_tokens == 0:
        raise LmforgeError(
            f"{example.source}: no token of this example is trained (an empty reply, or a template that writes no "
            "assistant text); give it a reply or remove it"
        )
    return example


def _check_train_on(train_on: str) -> None:
    if train_on not in TRAIN_ON:
        raise LmforgeError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
