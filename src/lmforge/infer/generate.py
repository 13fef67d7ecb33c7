"""Autoregressive generation with the KV cache: the prompt is run once, then one token a step."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from lmforge.infer.sampling import sample_next
from lmforge.model.transformer import Transformer


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    seed: int | None = None,
    tokenizer_vocab_size: int | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time until `max_new_tokens`, a stop id (not yielded), or the
    model's context is full; only ids below `tokenizer_vocab_size` (default: all) are chosen."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    device = model.lm_head.weight.device
    wanted, context = len(prompt_ids) + max_new_tokens, model.config.context_length
    total = min(wanted, context)
    if len(prompt_ids) >= total:
        return
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    cache = model.new_cache(1, total)
    if cache[0].length:  # a prefix (prefix tuning) holds the first positions: make room after it
        total = min(cache[0].length + wanted, context)
        if cache[0].length + len(prompt_ids) >= total:
            return
        cache = model.new_cache(1, total)
    logits = model(torch.tensor([list(prompt_ids)], device=device), cache)[:, -1]
    for _ in range(total - len(prompt_ids)):
        token = sample_next(logits, temperature, top_k, top_p, generator, tokenizer_vocab_size)
        token_id = int(token)
        if token_id in stop_ids:
            return
        yield token_id
        if cache[0].length + 1 >= total:  # the token just yielded was the last that fits
            return
        logits = model(token.view(1, 1), cache)[:, -1]


class TextStream:
    """Turns a growing list of token ids into text pieces, holding back bytes that do not yet form
    a whole UTF-8 character (byte-level BPE splits characters across tokens)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def flush(self) -> str:
        text = self.decode(self.ids)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece
