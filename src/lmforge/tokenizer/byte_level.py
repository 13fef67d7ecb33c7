"""The GPT-2 byte-level BPE pipeline every lmforge tokenizer shares.

Text is split by a regular expression into pre-tokens, each pre-token's UTF-8 bytes are written
with a 256-character printable alphabet (so any byte sequence is a string a vocabulary can hold),
and BPE merges those characters. Training, `vocab.json` + `merges.txt` and tiktoken rank files all
end up in this one shape, which is why everything can be saved as a single `tokenizer.json`.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

# GPT-2's split: contractions, letters, digits, punctuation runs, and whitespace where a run of
# spaces gives its last space to the following word (`\s+(?!\S)`), so "  hi" splits as " " + " hi".
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, and the
    others (controls, space, soft hyphen) are moved to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet: list[str] = []
    next_code_point = 256
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_code_point))
            next_code_point += 1
    return alphabet


BYTE_ALPHABET: list[str] = _byte_alphabet()


def bytes_to_symbols(data: bytes) -> str:
    """A byte string written in the byte-level alphabet, as vocab.json and tokenizer.json store tokens."""
    return "".join(BYTE_ALPHABET[byte] for byte in data)


_SYMBOL_TO_BYTE: dict[str, int] = {symbol: byte for byte, symbol in enumerate(BYTE_ALPHABET)}


def symbols_to_bytes(token: str) -> bytes | None:
    """The bytes a byte-level token stands for; None when it holds a character outside the alphabet
    (byte-level BPE never produces such a token)."""
    try:
        return bytes(_SYMBOL_TO_BYTE[symbol] for symbol in token)
    except KeyError:
        return None


def byte_level_tokenizer(model: models.BPE, split_pattern: str = GPT2_SPLIT_PATTERN) -> HFTokenizer:
    """A Hugging Face tokenizer around `model` with the byte-level pre-tokenizer and decoder.

    The split is an explicit regex (not ByteLevel's built-in one) so tiktoken files that use
    another pattern (cl100k, o200k) load with the pattern they were trained with.
    """
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def special_token(content: str) -> AddedToken:
    """A special token matched verbatim: never normalised, never stripping neighbouring spaces."""
    return AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
