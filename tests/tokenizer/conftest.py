"""A small tokenizer trained once per test session on mixed English, Chinese, emoji and code."""

from __future__ import annotations

import pytest

from lmforge.tokenizer import Tokenizer, train_tokenizer

ENGLISH = [
    "The quick brown fox jumps over the lazy dog. It's what they'd do, and we'll see.",
    "Tokenizers turn text into integers; language models turn integers into text again.",
    "In 1998, there were 12,345 people living in the town of Springfield (population estimate).",
]
CHINESE = [
    "迈向充满希望的新世纪——一九九八年新年讲话。",
    "同胞们、朋友们、女士们、先生们：在一九九八年来临之际，我十分高兴地向全国各族人民致以新年的祝贺！",
    "机器学习是人工智能的一个分支，语言模型可以生成中文文本。",
]
EMOJI = ["emoji 🤖🎉 and a family 👨‍👩‍👧 with flags 🇨🇳🇬🇧", "😀😃😄😁"]
CODE = [
    "def greet(name: str) -> str:\n    return f\"Hello, {name}!\"\n\n\nfor i in range(10):\n    print(greet(str(i)))\n",
    "if (x != 0) {\n\t\treturn y / x;\n\t}\n",
]
WHITESPACE = ["  leading spaces", "trailing spaces   ", "a\n\n\nb", "tabs\t\there", "   \n  \n", " " * 17, "\r\n\r\nwindows"]
SAMPLES = ENGLISH + CHINESE + EMOJI + CODE + WHITESPACE


@pytest.fixture(scope="session")
def trained() -> Tokenizer:
    return train_tokenizer(SAMPLES * 20, vocab_size=600)


@pytest.fixture(scope="session")
def samples() -> list[str]:
    return list(SAMPLES)
