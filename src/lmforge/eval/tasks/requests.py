"""Prompt strings to token ids, as lm-evaluation-harness encodes a (context, continuation) pair, so
that the same task scores the same tokens here and there."""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer


def encode_requests(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], bos_id: int | None) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per (context, continuation) pair.

    As the harness's `_encode_pair`: whitespace at the end of the context moves to the start of the
    continuation; the whole text is encoded and split after the context's own tokens, so the tokens
    scored are those the whole text tokenizes to. Contexts start with `bos_id` where the model's
    prompts do (Gemma, Llama); an empty context with no BOS starts with EOS (the harness's prefix
    token). Special-token strings in task text are read as plain text.
    """
    contexts, wholes = [], []
    for context, continuation in pairs:
        stripped = context.rstrip()
        contexts.append(stripped)
        wholes.append(context + continuation)
    context_ids = tokenizer.encode_batch(contexts, allowed_special=False)
    whole_ids = tokenizer.encode_batch(wholes, allowed_special=False)
    prefix = [] if bos_id is None else [bos_id]
    requests = []
    for context, whole in zip(context_ids, whole_ids):
        start = prefix + context
        if not start:
            if tokenizer.eos_id is None:
                raise LmforgeError("a task has an empty context and the tokenizer has neither BOS (generation.json) "
                                   "nor EOS to start it with")
            start = [tokenizer.eos_id]
        requests.append((start, whole[len(context):]))
    return requests
