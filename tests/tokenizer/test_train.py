"""Training, round trips and special tokens, with no external assets."""

from __future__ import annotations

import pytest

from lmforge.errors import LmforgeError
from lmforge.tokenizer import DEFAULT_SPECIAL_TOKENS, load_tokenizer, train_tokenizer

UNSEEN = ["Zebras quietly vex jumpy wizards 42×", "从未见过的汉字：龘靐齉", "🦄🪐", "\n\n\n\n    x", "      ", "naïve café"]


def test_round_trip_on_training_and_unseen_text(trained, samples):
    for text in samples + UNSEEN:
        assert trained.decode(trained.encode(text)) == text


def test_training_learns_merges(trained):
    text = "The quick brown fox jumps over the lazy dog."
    assert len(trained.encode(text)) < len(text.encode("utf-8")) / 2


def test_special_tokens_are_single_ids(trained):
    assert trained.special_tokens == {token: index for index, token in enumerate(DEFAULT_SPECIAL_TOKENS)}
    assert trained.eos_id == trained.token_to_id("<|endoftext|>") == 0
    text = "<|im_start|>user\nhi<|im_end|><|endoftext|>"
    ids = trained.encode(text)
    assert ids[0] == trained.token_to_id("<|im_start|>")
    assert ids[-2:] == [trained.token_to_id("<|im_end|>"), trained.eos_id]
    assert trained.decode(ids) == text


def test_special_strings_as_plain_text_when_not_allowed(trained):
    ids = trained.encode("<|endoftext|>", allowed_special=False)
    assert len(ids) > 1 and trained.eos_id not in ids
    assert trained.decode(ids) == "<|endoftext|>"


def test_encode_batch_matches_encode(trained, samples):
    assert trained.encode_batch(samples) == [trained.encode(text) for text in samples]
    assert trained.encode_batch(["<|endoftext|>"], allowed_special=False) == [trained.encode("<|endoftext|>", allowed_special=False)]


def test_vocab_size_counts_everything(trained):
    assert trained.vocab_size == 600
    assert max(trained.encode("".join(UNSEEN))) < trained.vocab_size


def test_decode_rejects_unknown_ids(trained):
    with pytest.raises(LmforgeError, match="outside this tokenizer's vocabulary"):
        trained.decode([trained.vocab_size])


def test_save_is_a_loadable_tokenizer_json(trained, samples, tmp_path):
    written = trained.save(tmp_path / "tok")
    assert written == tmp_path / "tok" / "tokenizer.json"
    assert trained.save(tmp_path / "named.json") == tmp_path / "named.json"
    assert sorted(path.name for path in (tmp_path / "tok").iterdir()) == ["tokenizer.json"]  # no temporary left
    reloaded = load_tokenizer(tmp_path / "tok")
    assert reloaded.encode_batch(samples + UNSEEN) == trained.encode_batch(samples + UNSEEN)
    assert reloaded.eos_id == trained.eos_id and reloaded.special_tokens == trained.special_tokens


def test_custom_special_tokens_and_eos():
    tokenizer = train_tokenizer(["hello world"] * 5, vocab_size=300, special_tokens=["<pad>", "<|endoftext|>"])
    assert tokenizer.special_tokens == {"<pad>": 0, "<|endoftext|>": 1}
    assert tokenizer.eos_id == 1


def test_vocab_too_small_is_a_user_error():
    with pytest.raises(LmforgeError, match="at least 259"):
        train_tokenizer(["hello"], vocab_size=100)
