"""Chat templates: ChatML by hand, parity with transformers' renderer, sandboxed errors, added special tokens."""

from __future__ import annotations

import pytest

from lmforge.data.examples import CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE, add_special_tokens, chat_template_of, render_chat
from lmforge.errors import LmforgeError
from lmforge.tokenizer import train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
]

# Exercises what transformers sets up: lstrip/trim blocks, tojson without HTML escaping, loop controls.
FEATURES_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'system' %}{% continue %}{% endif %}
    {{ message['role'] | upper }}: {{ message | tojson }}
{% endfor %}
{% if add_generation_prompt %}ASSISTANT:{% endif %}{{ eos_token }}"""


def test_chatml_renders_as_written_by_hand():
    expected = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
                "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    assert render_chat(CHATML_TEMPLATE, CONVERSATION, add_generation_prompt=False) == expected
    assert render_chat(CHATML_TEMPLATE, CONVERSATION, add_generation_prompt=True) == expected + "<|im_start|>assistant\n"


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, FEATURES_TEMPLATE])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_matches_transformers(template, add_generation_prompt):
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    messages = CONVERSATION + [{"role": "assistant", "content": "<4> & \"four\""}]
    [[expected], _] = chat_template_utils.render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>")
    rendered = render_chat(template, messages, add_generation_prompt=add_generation_prompt, bos_token="<s>", eos_token="</s>")
    assert rendered == expected
    if template is FEATURES_TEMPLATE:
        assert '"content": "你好"' in rendered and '"<4> & \\"four\\""' in rendered


def test_extra_variables_and_the_generation_block():
    template = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{% generation %}"
                "{{ message['content'] }}{% endgeneration %}{% else %}{{ greeting }} {{ message['content'] }}|{% endif %}{% endfor %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert render_chat(template, messages, add_generation_prompt=False, greeting="Dear") == "Dear hi|ok"


def test_template_errors_name_the_template():
    strict = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}x"
    with pytest.raises(LmforgeError, match=r"^chat template [\"']\{% if messages.*Conversations must start with the user"):
        render_chat(strict, CONVERSATION, add_generation_prompt=False)
    with pytest.raises(LmforgeError, match=r"^chat template '\{% for message in messages %\}': line 1: "):
        render_chat("{% for message in messages %}", CONVERSATION, add_generation_prompt=False)
    with pytest.raises(LmforgeError, match="chat template"):
        render_chat("{{ messages[0].__class__.__mro__ }}", CONVERSATION, add_generation_prompt=False)  # the sandbox refuses
    with pytest.raises(LmforgeError, match="chat template"):
        render_chat("{{ messages[0]['content'] + 1 }}", CONVERSATION, add_generation_prompt=False)


def test_the_template_of_generation_json():
    assert chat_template_of({"chat_template": CHATML_TEMPLATE}) == CHATML_TEMPLATE
    assert chat_template_of({"stop_tokens": ["<|im_end|>"]}) is None
    assert chat_template_of({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]}) == "d"
    with pytest.raises(LmforgeError, match="none named 'default'"):
        chat_template_of({"chat_template": [{"name": "tool_use", "template": "t"}]})
    with pytest.raises(LmforgeError, match="must be a string"):
        chat_template_of({"chat_template": 3})


def test_added_special_tokens_take_new_ids_and_keep_the_eos():
    base = train_tokenizer(["hello world, hello there"] * 20, vocab_size=300, special_tokens=["<|endoftext|>", "<|im_end|>"])
    before = base.encode("hello world")
    grown, added = add_special_tokens(base, CHATML_SPECIAL_TOKENS)
    assert added == ["<|im_start|>"]
    assert grown.token_to_id("<|im_start|>") == base.vocab_size and grown.vocab_size == base.vocab_size + 1
    assert grown.token_to_id("<|im_end|>") == base.token_to_id("<|im_end|>") and grown.eos_id == base.eos_id
    assert grown.encode("<|im_start|>user\nhello world<|im_end|>")[0] == base.vocab_size
    assert grown.encode("hello world") == before and set(grown.special_tokens) == {"<|endoftext|>", *CHATML_SPECIAL_TOKENS}
    assert "<|im_start|>" not in base.special_tokens  # the original is unchanged
    assert add_special_tokens(grown, CHATML_SPECIAL_TOKENS) == (grown, [])


def test_gemma_turns_and_the_template_a_vocabulary_implies(tokenizer):
    from lmforge.data.examples import GEMMA_TEMPLATE, vocabulary_template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}]
    assert render_chat(GEMMA_TEMPLATE, messages, add_generation_prompt=False, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n")
    assert render_chat(GEMMA_TEMPLATE, messages[1:2], add_generation_prompt=True, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    assert vocabulary_template(tokenizer) == (GEMMA_TEMPLATE, "<end_of_turn>")  # Gemma's markers come first
    chatml_only = train_tokenizer(["plain text"] * 20, vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"])
    assert vocabulary_template(chatml_only) == (CHATML_TEMPLATE, "<|im_end|>")
    assert vocabulary_template(train_tokenizer(["plain text"] * 20, vocab_size=300, special_tokens=["<|endoftext|>"])) is None
