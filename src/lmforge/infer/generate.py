"""One sequence at a time: a token iterator over the engine, and text streamed as whole characters."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from lmforge.infer.engine import Engine, Sampling
from lmforge.model.transformer import Transformer


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
    compile: bool = False,
) -> Iterator[int]:
    """Yield new token ids one at a time until `max_new_tokens`, a stop id (not yielded), or the
    model's context is full; only ids below `tokenizer_vocab_size` (default: all) are chosen.
    One sequence through the batched engine, with a cache just long enough (`compile`: see `Engine`)."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token")
    prefix = getattr(model, "prefix", None)
    needed = (prefix.length if prefix is not None else 0) + len(prompt_ids) + max_new_tokens
    room = model.config.context_length - (prefix.length if prefix is not None else 0)
    if max_new_tokens <= 0 or len(prompt_ids) >= room:
        return
    engine = Engine(model, lambda ids: "", vocab_size=tokenizer_vocab_size, stop_ids=stop_ids, max_batch=1,
                    max_length=needed, compile=compile)
    request = engine.submit(prompt_ids, Sampling(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                                 top_p=top_p, seed=seed))
    while not request.finished:
        for event in engine.step():
            if event.token_id is not None:
                yield event.token_id


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
