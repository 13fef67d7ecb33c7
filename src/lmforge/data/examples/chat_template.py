"""Chat templates: Jinja, rendered the way Hugging Face transformers renders them.

A template is untrusted code (it comes with a downloaded model), so it runs in jinja2's immutable
sandbox, with the settings and helpers transformers gives it: `trim_blocks`, `lstrip_blocks`, loop
controls, `raise_exception`, `strftime_now`, a `tojson` that leaves non-ASCII text alone, and the
`{% generation %}` block (rendered as its body: masks are found from prefixes, see `masks.py`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.byte_level import special_token

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
# Gemma's turn format (a system message opens the first user turn), for Gemma checkpoints that came
# without a template (a GGUF file need not carry one): its vocabulary already holds the markers.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set opening = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set opening = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + (opening if loop.first else '') + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA_SPECIAL_TOKENS = ("<start_of_turn>", "<end_of_turn>")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text in some templates; it renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """JSON as templates expect it: unlike Jinja's own filter, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment


_ENVIRONMENT = _environment()


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    try:
        return _ENVIRONMENT.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise LmforgeError(f"{_name(template)}: line {error.lineno}: {error.message}; fix the template") from None


def _name(template: str) -> str:
    """How an error names a template: its opening characters."""
    opening = " ".join(template.split())
    shown = opening if len(opening) <= 48 else opening[:48] + "..."
    return f"chat template {shown!r}"


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """The text a model sees for `messages`; `add_generation_prompt` appends the opening of the assistant's turn."""
    compiled = _compiled(template)
    context = {"tools": None, "documents": None, **extra}  # as transformers passes them
    try:
        return compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token, **context
        )
    except (jinja2.TemplateError, TypeError, ValueError, LookupError) as error:
        raise LmforgeError(f"{_name(template)}: {error}; fix the conversation or the template") from None


def chat_template_of(generation: dict) -> str | None:
    """The chat template a checkpoint's generation.json holds, or None. Hugging Face's list form
    ([{"name", "template"}, ...]) gives its "default" template."""
    template = generation.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise LmforgeError(f"generation.json: chat_template lists templates {sorted(map(str, named))} but none named 'default'; "
                           "name one 'default'")
    raise LmforgeError(f"generation.json: chat_template must be a string (a Jinja template), got {type(template).__name__}")


def add_special_tokens(tokenizer: Tokenizer, tokens: Sequence[str]) -> tuple[Tokenizer, list[str]]:
    """`tokenizer` with `tokens` as special tokens (new ids after the existing ones, the same EOS),
    and the tokens that were not special before. The caller grows the embedding to the new vocab size."""
    if any(not isinstance(token, str) or not token for token in tokens):
        raise LmforgeError(f"special tokens must be non-empty strings, got {list(tokens)!r}")
    missing = [token for token in dict.fromkeys(tokens) if token not in tokenizer.special_tokens]
    if not missing:
        return tokenizer, []
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    backend.add_special_tokens([special_token(token) for token in missing])
    eos_token = None if tokenizer.eos_id is None else tokenizer.backend.id_to_token(tokenizer.eos_id)
    return Tokenizer(backend, eos_token=eos_token), missing


def vocabulary_template(tokenizer: Tokenizer) -> tuple[str, str] | None:
    """(template, end-of-turn token) for a tokenizer that already holds a known format's turn
    markers (Gemma's, ChatML's), so a checkpoint without a template needs no new tokens."""
    for template, (start, end) in ((GEMMA_TEMPLATE, GEMMA_SPECIAL_TOKENS), (CHATML_TEMPLATE, CHATML_SPECIAL_TOKENS)):
        if tokenizer.token_to_id(start) is not None and tokenizer.token_to_id(end) is not None:
            return template, end
    return None
