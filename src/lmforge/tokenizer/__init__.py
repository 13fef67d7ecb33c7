"""Byte-level BPE tokenizers: train one, load HF / GPT-2 / tiktoken files, encode and decode."""

from lmforge.tokenizer.load import load_tokenizer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_tokenizer

__all__ = ["DEFAULT_SPECIAL_TOKENS", "Tokenizer", "load_tokenizer", "train_tokenizer"]
