"""Loss masks: exactly the assistant turns and their end-of-turn tokens, for ChatML and a Gemma-style template."""

from __future__ import annotations

import pytest

from lmforge.data.examples import (
    CHATML_TEMPLATE,
    ChatExample,
    CompletionExample,
    LabeledText,
    Message,
    TokenizedExample,
    fit_context,
    tokenize_chat,
    tokenize_completion,
    tokenize_examples,
    tokenize_labeled,
)
from lmforge.errors import LmforgeError

CHAT = ChatExample((
    Message("system", "You are a helpful assistant."),
    Message("user", "What is the capital of France?"),
    Message("assistant", "The capital of France is Paris."),
    Message("user", "请把这句话翻译成英文：我喜欢猫。"),
    Message("assistant", "I like cats.\n"),
), "chat.jsonl:7")

# Gemma's shape: a BOS, `user`/`model` turns closed by <end_of_turn>, the system text folded into the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def trained_runs(tokenizer, example: TokenizedExample) -> list[str]:
    """The text of each maximal run of supervised tokens."""
    runs, current = [], []
    for token, supervised in zip(example.ids, example.supervised):
        if supervised:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_every_assistant_turn_and_its_end_of_turn_token_are_trained(tokenizer):
    example = tokenize_chat(CHAT, tokenizer, CHATML_TEMPLATE)
    assert tokenizer.decode(example.ids).endswith("I like cats.\n<|im_end|>\n")
    assert trained_runs(tokenizer, example) == ["The capital of France is Paris.<|im_end|>", "I like cats.\n<|im_end|>"]
    assert example.supervised[-1] is False  # the newline after <|im_end|> is not a target
    assert example.source == "chat.jsonl:7" and len(example.ids) == len(example.supervised)


def test_last_turn_and_prompt_plus_completion(tokenizer):
    last = tokenize_chat(CHAT, tokenizer, CHATML_TEMPLATE, train_on="last-turn")
    assert trained_runs(tokenizer, last) == ["I like cats.\n<|im_end|>"]
    everything = tokenize_chat(CHAT, tokenizer, CHATML_TEMPLATE, train_on="prompt+completion")
    assert everything.ids == last.ids and all(everything.supervised)


def test_masks_match_transformers_assistant_masks(tokenizer):
    transformers = pytest.importorskip("transformers")
    # ChatML with the assistant text in a {% generation %} block, which transformers' own mask needs.
    marked = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
              "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
              "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}")
    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend).apply_chat_template(
        [{"role": message.role, "content": message.content} for message in CHAT.messages],
        chat_template=marked, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ours = tokenize_chat(CHAT, tokenizer, CHATML_TEMPLATE)
    assert ours.ids == list(reference["input_ids"])
    assert [int(supervised) for supervised in ours.supervised] == list(reference["assistant_masks"])


def test_a_gemma_style_template_trains_the_model_turns(tokenizer):
    example = tokenize_chat(CHAT, tokenizer, GEMMA_TEMPLATE, bos_token="<bos>")
    text = tokenizer.decode(example.ids)
    assert text.startswith("<bos><start_of_turn>user\nYou are a helpful assistant.\n\nWhat is")
    assert "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n" in text
    assert example.ids[0] == tokenizer.token_to_id("<bos>")
    assert trained_runs(tokenizer, example) == ["The capital of France is Paris.<end_of_turn>", "I like cats.<end_of_turn>"]


def test_a_template_that_is_not_prefix_stable_is_an_error(tokenizer):
    # Like templates that drop earlier turns' reasoning: the last message renders differently from the others.
    unstable = ("{% for message in messages %}{% if loop.last %}[final] {% endif %}"
                "{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(LmforgeError, match=r"^chat.jsonl:7: the chat template is not prefix-stable"):
        tokenize_chat(CHAT, tokenizer, unstable)
    assert all(tokenize_chat(CHAT, tokenizer, unstable, train_on="prompt+completion").supervised)


def test_conversations_must_end_with_a_reply_that_trains_something(tokenizer):
    unanswered = ChatExample(CHAT.messages[:-1], "chat.jsonl:9")
    with pytest.raises(LmforgeError, match="^chat.jsonl:9: the conversation ends with a user message"):
        tokenize_chat(unanswered, tokenizer, CHATML_TEMPLATE)
    contents_only = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    empty = ChatExample((Message("user", "Hi"), Message("assistant", "")), "chat.jsonl:10")
    with pytest.raises(LmforgeError, match="^chat.jsonl:10: no token of this example is trained"):
        tokenize_chat(empty, tokenizer, contents_only)


def test_prompt_and_completion_are_tokenized_apart_and_end_with_eos(tokenizer):
    example = CompletionExample("The capital of France is", " Paris.", "pc.jsonl:1")
    prompt, completion = tokenizer.encode("The capital of France is"), tokenizer.encode(" Paris.")
    tokenized = tokenize_completion(example, tokenizer)
    assert tokenized.ids == prompt + completion + [tokenizer.eos_id]
    assert tokenized.supervised == [False] * len(prompt) + [True] * (len(completion) + 1)
    assert all(tokenize_completion(example, tokenizer, train_on="prompt+completion").supervised)
    with pytest.raises(LmforgeError, match="train_on must be one of"):
        tokenize_completion(example, tokenizer, train_on="everything")


def test_mixed_examples_need_a_template_only_for_chats(tokenizer):
    completion = CompletionExample("Q:", " A", "pc.jsonl:1")
    tokenized = tokenize_examples([completion, CHAT], tokenizer, CHATML_TEMPLATE)
    assert tokenized == [tokenize_completion(completion, tokenizer), tokenize_chat(CHAT, tokenizer, CHATML_TEMPLATE)]
    assert len(tokenize_examples([completion], tokenizer, None)) == 1
    with pytest.raises(LmforgeError, match="^chat.jsonl:7: a chat example needs a chat template"):
        tokenize_examples([completion, CHAT], tokenizer, None)


def test_fitting_the_context_keeps_the_first_tokens():
    example = TokenizedExample(list(range(10)), [False] * 4 + [True] * 6, "long.jsonl:3")
    assert fit_context(example, 9) == (example, False)
    cut, truncated = fit_context(example, 5)
    assert truncated and cut.ids == list(range(6)) and cut.supervised == [False] * 4 + [True] * 2
    with pytest.raises(LmforgeError, match=r"^long.jsonl:3: none of its trained tokens is within the first 4 .*longer context"):
        fit_context(example, 3)


def test_labeled_texts_keep_their_head_and_known_labels(tokenizer):
    texts = [LabeledText("今天天气很好，我们去公园散步吧。", "positive", "r.jsonl:1"),
             LabeledText("The dog.", "negative", "r.jsonl:2")]
    window = len(tokenizer.encode("The dog."))
    long = tokenizer.encode(texts[0].text)
    assert len(long) > window
    rows, truncated = tokenize_labeled(texts, tokenizer, ["negative", "positive"], context_length=window)
    assert rows == [(long[:window], 1), (tokenizer.encode("The dog."), 0)] and truncated == 1
    with pytest.raises(LmforgeError, match=r"^r.jsonl:2: label 'negative' is not one of the known labels \('good', 'bad'\)"):
        tokenize_labeled(texts[1:], tokenizer, ["good", "bad"], context_length=8)
    with pytest.raises(LmforgeError, match="^r.jsonl:4: the text is empty"):
        tokenize_labeled([LabeledText("", "good", "r.jsonl:4")], tokenizer, ["good"], context_length=8)
