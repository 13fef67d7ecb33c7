"""The tiktoken fast path: the same ids as the Hugging Face backend, taken exactly when it is exact."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers

from lmforge.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizer import tiktoken_engine
from lmforge.tokenizer.byte_level import BYTE_ALPHABET, byte_level_tokenizer, bytes_to_symbols, special_token
from lmforge.tokenizer.tiktoken_engine import map_over_threads, tiktoken_refusal

GPT2 = Path(os.environ.get("LMFORGE_GPT2_ASSETS", Path.home() / ".cache" / "lmforge-test-assets" / "gpt2"))
GPT2_FILES = ["gpt2.tiktoken", "gpt2_vocab.json"]
SOURCES = sorted(Path(__file__).resolve().parents[2].joinpath("src", "lmforge").rglob("*.py"))[:40]
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's John's; they'll've gone, I'D SAY 'S.",
    "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）。同胞们、朋友们！",
    "emoji 🤖🎉 family 👨‍👩‍👧‍👦 flags 🇨🇳🇺🇸 skin 👍🏽 keycap 1️⃣ 😀😃😄😁",
    "def f(x):\n    return {'a': x ** 2}  # comment\n\n\n\tif x:\n\t\tpass\n",
    "     five spaces, then\n\n\n\nnewlines\r\n\r\n and    tabs\t\t\t end   ",
    " " * 40 + "\n" * 9 + " \n \n" + "\u00a0\u2003\u3000 odd spaces" + " " * 7,
    "numbers 3.14159 1,234,567 ０１２３ ½ ²³ ١٢٣ 2024-01-31T12:00:00Z",
    "Ünïcödé façade naïve Ωμέγα Привет мир שלום עולם مرحبا नमस्ते こんにちは 안녕하세요 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽",
    "<|endoftext|>start<|endoftext|> and <|endoftext| <|im_start|>user\nhi<|im_end|>",
    "a" * 500 + "!" * 100 + "ab" * 200,
    "",
]
PIECES = ["the", " the", "The", "ing", " 中文", "词元", "🤖", "👨‍👩‍👧", " ", "  ", "\n", "\n\n", "\t", "'s", "'ll", "123",
          "4567", ".", "...", "<|endoftext|>", "<|im_start|>", "<|", "|>", "é", "\u00a0", "\u3000", "x", "{", "}", "\r\n"]


def varied_texts() -> list[str]:
    """The fixed cases, random mixtures of pieces that stress the split, and this package's source."""
    generator = random.Random(0)
    mixtures = ["".join(generator.choice(PIECES) for _ in range(generator.randrange(1, 60))) for _ in range(300)]
    return TEXTS + mixtures + [path.read_text(encoding="utf-8") for path in SOURCES]


def backend_ids(tokenizer: Tokenizer, texts: list[str], allowed_special: bool) -> list[list[int]]:
    """The Hugging Face backend's own ids: what `encode` returned before the fast path existed."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    backend.encode_special_tokens = not allowed_special
    return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]


def assert_same_ids_as_backend(tokenizer: Tokenizer) -> None:
    texts = varied_texts()
    for allowed_special in (True, False):
        expected = backend_ids(tokenizer, texts, allowed_special)
        assert [tokenizer.encode(text, allowed_special=allowed_special) for text in texts] == expected
        assert tokenizer.encode_batch(texts, allowed_special=allowed_special) == expected


def edited(tokenizer: Tokenizer, edit) -> Tokenizer:
    """`tokenizer` with its tokenizer.json changed by `edit(spec)`."""
    spec = json.loads(tokenizer.backend.to_str())
    edit(spec)
    return Tokenizer(HFTokenizer.from_str(json.dumps(spec)))


@pytest.fixture(scope="module")
def larger(samples) -> Tokenizer:
    """More merges than the session's tokenizer: trained on this package's source as well."""
    return train_tokenizer(samples * 20 + [path.read_text(encoding="utf-8") for path in SOURCES], vocab_size=1500)


@pytest.mark.parametrize("name", GPT2_FILES)
def test_gpt2_files_take_the_fast_path_with_the_same_ids(name):
    if not (GPT2 / name).is_file() or not (GPT2 / "gpt2_merges.txt").is_file():
        pytest.skip(f"GPT-2 files not in {GPT2} (see tests/tokenizer/test_gpt2_parity.py)")
    tokenizer = load_tokenizer(GPT2 / name)
    assert tokenizer.engine == "tiktoken"
    assert_same_ids_as_backend(tokenizer)


def test_trained_tokenizers_take_the_fast_path_with_the_same_ids(trained, larger, tmp_path):
    for tokenizer in (trained, larger, load_tokenizer(larger.save(tmp_path))):
        assert tokenizer.engine == "tiktoken"
        assert_same_ids_as_backend(tokenizer)


def test_byte_level_builtin_regex_is_gpt2_split(larger):
    def builtin_split(spec):
        spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}

    tokenizer = edited(larger, builtin_split)
    assert tokenizer.engine == "tiktoken"
    assert_same_ids_as_backend(tokenizer)


def test_batches_run_over_threads_in_order(monkeypatch):
    monkeypatch.setattr(tiktoken_engine, "MIN_CHARACTERS_PER_RUN", 1)
    monkeypatch.setattr(tiktoken_engine, "encoding_threads", lambda: 4)
    threads = set()

    def length(text):
        threads.add(threading.get_ident())
        time.sleep(0.001)  # long enough that the pool starts a thread per run instead of reusing a finished one
        return [len(text)]

    texts = ["x" * size for size in range(1, 200)]
    assert map_over_threads(length, texts) == [[len(text)] for text in texts]
    assert len(threads) > 1
    assert map_over_threads(length, []) == []


def test_tokenizers_parallelism_off_means_one_thread(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert tiktoken_engine.encoding_threads() == 1


def _tokenizer_with_merges(merges: list[tuple[bytes, bytes]], specials: list[str] = ["<|endoftext|>"]) -> Tokenizer:
    """A byte-level BPE from bytes and `merges`, the tokens' ids in merge order, then the special tokens."""
    vocab = {symbol: index for index, symbol in enumerate(BYTE_ALPHABET)}
    symbol_merges = [(bytes_to_symbols(left), bytes_to_symbols(right)) for left, right in merges]
    for left, right in symbol_merges:
        vocab.setdefault(left + right, len(vocab))
    backend = byte_level_tokenizer(models.BPE(vocab, symbol_merges))
    backend.add_special_tokens([special_token(content) for content in specials])
    return Tokenizer(backend)


def test_a_token_its_merges_do_not_rebuild_is_refused():
    # "abc" is made from "ab" + "c", but "bc" merges first, so BPE leaves "a" + "bc" on "abc";
    # tiktoken would join those two into "abc" because that token exists.
    tokenizer = _tokenizer_with_merges([(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")])
    assert tokenizer.engine == "tokenizers"
    assert "'abc' encodes as ids" in tiktoken_refusal(json.loads(tokenizer.backend.to_str()))
    assert tokenizer.encode("abc") == [ord("a"), 256]


def test_a_token_made_by_two_merges_is_refused():
    tokenizer = _tokenizer_with_merges([(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")])
    assert "that an earlier merge makes" in tiktoken_refusal(json.loads(tokenizer.backend.to_str()))
    assert tokenizer.engine == "tokenizers"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda spec: _swap_ids(spec, -1, -2), "ids are not in merge order"),
        (lambda spec: spec.update(normalizer={"type": "NFC"}), "NFC normalizer"),
        (lambda spec: spec.update(pre_tokenizer={"type": "Whitespace"}), "not a byte-level regex split"),
        (lambda spec: spec["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\S+|\s+"), "split pattern"),
        (lambda spec: spec["model"].update(ignore_merges=True), "ignore_merges is on"),
        (lambda spec: spec["model"].update(byte_fallback=True), "sets byte_fallback"),
        (lambda spec: spec["added_tokens"][0].update(special=False), "not a special token matched verbatim"),
        (lambda spec: spec["added_tokens"][1].update(lstrip=True), "not a special token matched verbatim"),
        (lambda spec: spec["added_tokens"][1].update(content="<|endoftext|>!"), "is a prefix of"),
        (lambda spec: spec["model"]["merges"].append(spec["model"]["merges"][0]), "nor made by an earlier merge"),
    ],
)
def test_any_broken_condition_keeps_the_backend(trained, edit, reason):
    tokenizer = edited(trained, edit)
    assert reason in tiktoken_refusal(json.loads(tokenizer.backend.to_str()))
    assert tokenizer.engine == "tokenizers"
    texts = varied_texts()[:50]
    assert tokenizer.encode_batch(texts) == backend_ids(tokenizer, texts, allowed_special=True)


def test_added_plain_token_or_normalizer_keeps_the_backend(trained):
    with_plain_token = HFTokenizer.from_str(trained.backend.to_str())
    with_plain_token.add_tokens(["hello world"])
    tokenizer = Tokenizer(with_plain_token)
    assert tokenizer.engine == "tokenizers"
    assert tokenizer.token_to_id("hello world") in tokenizer.encode("say hello world")
    lowercased = HFTokenizer.from_str(trained.backend.to_str())
    lowercased.normalizer = normalizers.Lowercase()
    assert Tokenizer(lowercased).engine == "tokenizers"


def _swap_ids(spec: dict, first: int, second: int) -> None:
    """Exchange the ids of two merged tokens, so that ids no longer follow the merge order."""
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    tokens = ["".join(merge if isinstance(merge, list) else merge.split(" ")) for merge in (merges[first], merges[second])]
    vocab[tokens[0]], vocab[tokens[1]] = vocab[tokens[1]], vocab[tokens[0]]
