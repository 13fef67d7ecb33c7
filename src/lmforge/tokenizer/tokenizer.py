"""`Tokenizer`: text <-> token ids, the one interface the rest of lmforge codes against.

It wraps a Hugging Face `tokenizers.Tokenizer` so that whatever a tokenizer was loaded from, it
saves as one `tokenizer.json`. Encoding runs on tiktoken's faster core whenever that provably gives
the same ids (see `tiktoken_engine`), and on the Hugging Face backend otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.tokenizer.tiktoken_engine import TiktokenEngine, tiktoken_engine

# Tried in order when no end-of-sequence token is named: GPT-2/Qwen, Llama 3, SentencePiece, Gemma.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


class Tokenizer:
    """Byte-level BPE with special tokens; build one with `load_tokenizer` or `train_tokenizer`."""

    def __init__(self, backend: HFTokenizer, *, eos_token: str | None = None) -> None:
        self._backend = backend
        self._backend_plain: HFTokenizer | None = None  # built on first encode(..., allowed_special=False)
        self._tiktoken: TiktokenEngine | None = None
        self._tiktoken_checked = False  # checked on first encode: the check reads the whole vocabulary
        self._special_tokens = {
            added.content: token_id for token_id, added in sorted(backend.get_added_tokens_decoder().items()) if added.special
        }
        self._vocab_size = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        if eos_token is None:
            eos_token = next((name for name in EOS_CANDIDATES if name in self._special_tokens), None)
        elif backend.token_to_id(eos_token) is None:
            raise LmforgeError(
                f"end-of-sequence token {eos_token!r} is not in the vocabulary; name one of {sorted(self._special_tokens)}"
            )
        self._eos_id = None if eos_token is None else backend.token_to_id(eos_token)

    @property
    def vocab_size(self) -> int:
        """Rows an embedding table needs: one past the largest id, special tokens included."""
        return self._vocab_size

    @property
    def eos_id(self) -> int | None:
        """The id written after every document and used to stop generation."""
        return self._eos_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def backend(self) -> HFTokenizer:
        """The underlying Hugging Face tokenizer, for code that needs offsets or other extras."""
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    @property
    def engine(self) -> str:
        """What encodes: "tiktoken" when its core gives exactly this tokenizer's ids, else "tokenizers"."""
        return "tokenizers" if self._fast_engine() is None else "tiktoken"

    def _fast_engine(self) -> TiktokenEngine | None:
        if not self._tiktoken_checked:
            self._tiktoken = tiktoken_engine(self._backend)
            self._tiktoken_checked = True
        return self._tiktoken

    def _encoder(self, allowed_special: bool) -> HFTokenizer:
        if allowed_special:
            return self._backend
        if self._backend_plain is None:
            plain = HFTokenizer.from_str(self._backend.to_str())
            plain.encode_special_tokens = True  # "<|endoftext|>" in user text is just text
            self._backend_plain = plain
        return self._backend_plain

    def encode(self, text: str, *, allowed_special: bool = True) -> list[int]:
        """Token ids of `text`. With `allowed_special=False`, special-token strings in the text are
        encoded as ordinary characters (use it for untrusted text such as web documents)."""
        fast = self._fast_engine()
        if fast is not None:
            return fast.encode(text, allowed_special)
        return self._encoder(allowed_special).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: bool = True) -> list[list[int]]:
        """`encode` for many texts at once, spread over all cores."""
        fast = self._fast_engine()
        if fast is not None:
            return fast.encode_batch(texts, allowed_special)
        encodings = self._encoder(allowed_special).encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD, as in tiktoken."""
        ids = list(ids)
        bad = next((token_id for token_id in ids if not 0 <= token_id < self._vocab_size), None)
        if bad is not None:
            raise LmforgeError(f"token id {bad} is outside this tokenizer's vocabulary (0..{self._vocab_size - 1})")
        return self._backend.decode(ids, skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokenizer.json` atomically (a crash leaves the old file or none, never half of one).

        `path` is the file itself when it ends in `.json`, otherwise a directory (created if needed)
        that receives `tokenizer.json`. Returns the file written.
        """
        target = Path(path)
        if target.suffix != ".json":
            target = target / "tokenizer.json"
        atomic_write_text(target, self._backend.to_str(pretty=True))
        return target

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self._vocab_size}, eos_id={self._eos_id}, special_tokens={len(self._special_tokens)})"
