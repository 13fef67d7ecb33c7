"""A small byte-level BPE (English and Chinese) with the ChatML and Gemma turn markers, for every examples test."""

from __future__ import annotations

import pytest

from lmforge.data.examples import CHATML_SPECIAL_TOKENS, add_special_tokens
from lmforge.tokenizer import Tokenizer, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the wind.",
    "今天天气很好，我们去公园散步吧。",
    "请把这句话翻译成英文：我喜欢学习语言模型。",
    "You are a helpful assistant. Answer briefly and kindly.",
]


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """Special tokens <|endoftext|> (EOS) and Gemma's markers from training; ChatML's added afterwards, as a
    fine-tune of a base model without them would."""
    base = train_tokenizer(CORPUS * 20, vocab_size=400, special_tokens=["<|endoftext|>", "<bos>", "<start_of_turn>", "<end_of_turn>"])
    return add_special_tokens(base, CHATML_SPECIAL_TOKENS)[0]
