"""tiktoken rank files: ranks -> merges, and ids equal to tiktoken's on the same ranks (no assets needed)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.byte_level import BYTE_ALPHABET, GPT2_SPLIT_PATTERN
from lmforge.tokenizer.tiktoken_file import ranks_to_merges, read_ranks

SYMBOL_TO_BYTE = {symbol: byte for byte, symbol in enumerate(BYTE_ALPHABET)}


def write_rank_file(path: Path, ranks: dict[bytes, int]) -> Path:
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=lambda item: item[1])]
    path.write_text("\n".join(lines) + "\n")
    return path


def ranks_of(tokenizer) -> dict[bytes, int]:
    """A trained tokenizer's vocabulary as tiktoken ranks (special tokens dropped, ids shifted down)."""
    specials = set(tokenizer.special_tokens)
    vocab = {token: index for token, index in tokenizer.backend.get_vocab(with_added_tokens=False).items() if token not in specials}
    first = min(vocab.values())
    return {bytes(SYMBOL_TO_BYTE[symbol] for symbol in token): index - first for token, index in vocab.items()}


def byte_ranks() -> dict[bytes, int]:
    return {bytes([byte]): byte for byte in range(256)}


def test_merge_is_the_last_step_of_lower_ranked_bpe():
    ranks = byte_ranks() | {b"ab": 256, b"bc": 257, b"abc": 258, b"cab": 259}
    assert ranks_to_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"ab")]


def test_token_without_a_merge_path_is_rejected():
    with pytest.raises(LmforgeError, match="cannot be built from two lower-ranked tokens"):
        ranks_to_merges(byte_ranks() | {b"xyz": 256})


def test_bad_lines_name_the_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("IQ== 0\nnot base64!! 1\n")
    with pytest.raises(LmforgeError, match=r"bad.tiktoken:2: expected `<base64 token> <rank>`"):
        read_ranks(path)


def test_missing_bytes_are_rejected(tmp_path):
    path = write_rank_file(tmp_path / "partial.tiktoken", {b"a": 0, b"b": 1})
    with pytest.raises(LmforgeError, match="254 of the 256 single bytes have no rank"):
        read_ranks(path)


def test_ids_equal_tiktoken_on_the_same_ranks(trained, samples, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    ranks = ranks_of(trained)
    path = write_rank_file(tmp_path / "small.tiktoken", ranks)
    reference = tiktoken.Encoding(
        name="small", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )
    ours = load_tokenizer(path)
    assert ours.eos_id == len(ranks) and ours.vocab_size == len(ranks) + 1
    texts = samples + ["<|endoftext|>between<|endoftext|>", "never seen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ﷽", "x" * 300, "\n \n  \n   "]
    for text in texts:
        assert ours.encode(text) == reference.encode(text, allowed_special="all"), text
        assert ours.encode(text, allowed_special=False) == reference.encode_ordinary(text), text
        assert ours.decode(ours.encode(text)) == text


def test_rank_file_without_the_suffix_is_detected(trained, tmp_path):
    path = write_rank_file(tmp_path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4", ranks_of(trained))
    assert load_tokenizer(path).encode("hello") == load_tokenizer(write_rank_file(tmp_path / "a.tiktoken", ranks_of(trained))).encode("hello")


def test_options_choose_pattern_and_special_tokens(trained, tmp_path):
    path = write_rank_file(tmp_path / "small.tiktoken", ranks_of(trained))
    size = len(ranks_of(trained))
    tokenizer = load_tokenizer(
        path,
        split_pattern=r"\S+|\s+",
        special_tokens={"<|end|>": size + 5, "<|pad|>": size + 6},
        eos_token="<|end|>",
    )
    assert tokenizer.eos_id == size + 5 and tokenizer.vocab_size == size + 7
    assert tokenizer.special_tokens == {"<|end|>": size + 5, "<|pad|>": size + 6}
    assert tokenizer.decode(tokenizer.encode("a, b<|pad|>")) == "a, b<|pad|>"
    # the split leaves "<|pad|>" whole; as plain text it is still bytes and merges, not the special id
    plain = tokenizer.encode("<|pad|>", allowed_special=False)
    assert size + 6 not in plain and tokenizer.decode(plain) == "<|pad|>"
    with pytest.raises(LmforgeError, match="cannot take id 0"):
        load_tokenizer(path, special_tokens={"<|end|>": 0})
