"""`train_tokenizer`: learn a byte-level BPE vocabulary from text."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import models, trainers
from tokenizers.pre_tokenizers import ByteLevel

from lmforge.errors import LmforgeError, warn
from lmforge.tokenizer.byte_level import GPT2_SPLIT_PATTERN, byte_level_tokenizer, special_token
from lmforge.tokenizer.tokenizer import Tokenizer

# The end-of-document token (the eos id), then the chat template's turn markers.
DEFAULT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def check_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    """Fail before reading a corpus when the vocabulary cannot even hold the bytes and special tokens."""
    specials = len(set(special_tokens))
    if vocab_size < 256 + specials:
        raise LmforgeError(
            f"vocab size {vocab_size} is too small: 256 byte tokens + {specials} special tokens need at least {256 + specials}"
        )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: list[str] = DEFAULT_SPECIAL_TOKENS,
    *,
    min_frequency: int = 2,
    split_pattern: str = GPT2_SPLIT_PATTERN,
    show_progress: bool = False,
) -> Tokenizer:
    """Train byte-level BPE on `texts`: special tokens take ids 0.., then the 256 bytes, then merges.

    All 256 bytes are in the vocabulary whatever the text, so any input encodes without unknown
    tokens. A small corpus may stop short of `vocab_size` when no pair occurs `min_frequency` times.
    The eos token is `<|endoftext|>` when listed, else the first special token.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    check_vocab_size(vocab_size, special_tokens)
    backend = byte_level_tokenizer(models.BPE(), split_pattern)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[special_token(content) for content in special_tokens],
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() < vocab_size:
        warn(f"the vocabulary stopped at {backend.get_vocab_size():,} of the {vocab_size:,} tokens asked for: no other pair of "
             f"tokens occurs {min_frequency}+ times in this corpus (a larger corpus, or a lower minimum frequency, gives more)")
    eos_token = "<|endoftext|>" if "<|endoftext|>" in special_tokens else next(iter(special_tokens), None)
    return Tokenizer(backend, eos_token=eos_token)
