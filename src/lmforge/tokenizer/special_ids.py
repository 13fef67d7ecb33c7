"""What a checkpoint's `generation.json` and tokenizer say about the special ids of decoding, read
in this one place for every command that prompts a model (generate, chat, serve, eval, PPO
rollouts) and for chat templates that write `{{ bos_token }}` / `{{ eos_token }}`."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class SpecialIds:
    stop_ids: frozenset[int]  # generation.json's stop_token_ids and the tokenizer's EOS
    bos_id: int | None  # generation.json's bos_token_id: prompts start with it (Gemma); None: they do not
    bos_token: str  # the names templates write ("" when there is none)
    eos_token: str

    def template_tokens(self) -> dict[str, str]:
        return {"bos_token": self.bos_token, "eos_token": self.eos_token}


def special_ids(generation: dict, tokenizer: Tokenizer) -> SpecialIds:
    stops = set(generation.get("stop_token_ids") or [])
    if tokenizer.eos_id is not None:
        stops.add(tokenizer.eos_id)
    names = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
    bos_id = generation.get("bos_token_id")
    return SpecialIds(frozenset(stops), bos_id, names.get(bos_id, ""), names.get(tokenizer.eos_id, ""))
