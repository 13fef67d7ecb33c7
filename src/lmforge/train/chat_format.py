"""The chat format a fine-tune renders conversations in: the checkpoint's own template, the turn
format its vocabulary implies, or ChatML added to the tokenizer; turn markers the base never
trained reset to a start of their own."""

from __future__ import annotations

from lmforge.data.examples import CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE
from lmforge.data.examples.chat_template import (
    add_special_tokens,
    chat_template_of,
    vocabulary_template,
)
from lmforge.model.config import ModelConfig
from lmforge.model.vocabulary import (
    grow_vocabulary,
    reset_untrained_rows,
    untrained_rows,
)
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.special_ids import special_ids


def chat_format(config: ModelConfig, state: dict, tokenizer: Tokenizer, generation: dict, notes: list[str]):
    """(config, tokenizer, generation, template) for chat examples: the checkpoint's own template,
    else ChatML, whose turn markers are added to the tokenizer with mean-initialised embedding rows.
    Turn markers a base model never trained (Gemma's in its base checkpoint) get such rows too."""
    template = chat_template_of(generation)
    if template:
        _reset_untrained_markers(state, tokenizer, template, None, notes)
        return config, tokenizer, generation, template
    known = vocabulary_template(tokenizer)
    if known is not None:
        template, end_of_turn = known
        notes.append(f"chat template: the checkpoint has none; its vocabulary holds {end_of_turn}, so its own turn format is used")
        _reset_untrained_markers(state, tokenizer, template, end_of_turn, notes)
        stops = sorted({*generation.get("stop_token_ids", []), tokenizer.token_to_id(end_of_turn)})
        return config, tokenizer, {**generation, "chat_template": template, "stop_token_ids": stops}, template
    used = tokenizer.vocab_size
    tokenizer, added = add_special_tokens(tokenizer, CHATML_SPECIAL_TOKENS)
    if added:
        grown = grow_vocabulary(config, state, used, tokenizer.vocab_size)
        notes.append(f"chat template: ChatML; added {', '.join(added)} to the tokenizer (ids {used}–{tokenizer.vocab_size - 1}) "
                     "with the mean embedding row" + (f"; vocabulary {config.vocab_size:,} → {grown.vocab_size:,}"
                                                       if grown.vocab_size != config.vocab_size else ""))
        config = grown
    else:
        _reset_untrained_markers(state, tokenizer, CHATML_TEMPLATE, CHATML_SPECIAL_TOKENS[1], notes)
    stops = sorted({*generation.get("stop_token_ids", []), tokenizer.token_to_id(CHATML_SPECIAL_TOKENS[1])})
    return config, tokenizer, {**generation, "chat_template": CHATML_TEMPLATE, "stop_token_ids": stops}, CHATML_TEMPLATE


def _reset_untrained_markers(state: dict, tokenizer: Tokenizer, template: str, end_of_turn: str | None,
                             notes: list[str]) -> None:
    """The template's special tokens whose rows were never trained start from the mean row instead,
    the end-of-turn marker from the end-of-sequence token's row, which the model already predicts
    where a text ends (in `state`, so the fine-tune's checkpoint holds them; reported)."""
    if "token_embedding.weight" not in state:  # a quantized base keeps its rows as stored
        return
    markers = {name: token_id for name, token_id in tokenizer.special_tokens.items() if name in template}
    untrained = untrained_rows(state, sorted(markers.values()))
    if untrained:
        end_id, eos_id = tokenizer.token_to_id(end_of_turn) if end_of_turn else None, tokenizer.eos_id
        like = {end_id: eos_id} if end_id is not None and eos_id is not None and eos_id != end_id else {}
        reset_untrained_rows(state, untrained, like)
        names = [name for name, token_id in markers.items() if token_id in untrained]
        start = " (the end-of-turn marker from the end-of-sequence token's)" if end_id in untrained and like else ""
        notes.append(f"turn markers {', '.join(names)} were never trained in this base model (their rows share one "
                     f"direction with many unused tokens, or are near zero): they start from the mean embedding row{start}")


def template_tokens(tokenizer: Tokenizer, generation: dict) -> dict[str, str]:
    """The bos_token / eos_token strings a template may write (Gemma's starts with `{{ bos_token }}`)."""
    return special_ids(generation, tokenizer).template_tokens()
