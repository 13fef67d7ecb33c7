"""`load_tokenizer`: one entry point for every tokenizer format lmforge reads.

- a Hugging Face `tokenizer.json` (or a directory holding one),
- GPT-2 style `vocab.json` + `merges.txt` (a directory holding both, or the vocab file itself,
  whose merges file is found by name: `gpt2_vocab.json` -> `gpt2_merges.txt`),
- a tiktoken rank file (`*.tiktoken`, or any file of `base64 rank` lines).

The last two carry no pre-tokenizer or special tokens, so they get the GPT-2 split pattern and
`<|endoftext|>` after the last id unless `split_pattern` / `special_tokens` say otherwise.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.errors import LmforgeError
from lmforge.tokenizer.byte_level import GPT2_SPLIT_PATTERN, byte_level_tokenizer, special_token
from lmforge.tokenizer.tiktoken_file import ranks_to_vocab_and_merges, read_ranks
from lmforge.tokenizer.tokenizer import Tokenizer

FORMATS_HINT = "a tokenizer.json, a directory holding one (or vocab.json + merges.txt), or a .tiktoken rank file"
_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} [0-9]+\s*$")


def load_tokenizer(
    path: str | os.PathLike,
    *,
    split_pattern: str | None = None,
    special_tokens: dict[str, int] | None = None,
    eos_token: str | None = None,
) -> Tokenizer:
    """Load a tokenizer from any supported file or directory, detecting the format.

    `split_pattern` and `special_tokens` (content -> id) apply to vocab.json and tiktoken files,
    which do not store them; `eos_token` names the end-of-sequence token when it is not one of the
    usual names (`<|endoftext|>`, `<|end_of_text|>`, `</s>`, `<eos>`).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _from_vocab_and_merges(path / "vocab.json", path / "merges.txt", split_pattern, special_tokens, eos_token)
        else:
            raise LmforgeError(f"{path} holds neither tokenizer.json nor vocab.json + merges.txt; pass {FORMATS_HINT}")
    elif not path.is_file():
        raise LmforgeError(f"tokenizer {path} does not exist; pass {FORMATS_HINT}")

    if path.suffix == ".tiktoken" or (path.suffix != ".json" and _looks_like_rank_file(path)):
        return _from_rank_file(path, split_pattern, special_tokens, eos_token)
    if path.suffix != ".json":
        raise LmforgeError(f"cannot tell the tokenizer format of {path}; pass {FORMATS_HINT}")
    if path.name.endswith("vocab.json"):
        merges_path = path.with_name(path.name[: -len("vocab.json")] + "merges.txt")
        if not merges_path.is_file():
            raise LmforgeError(f"{path} is a vocab.json but its merges file {merges_path} is missing; put them side by side")
        return _from_vocab_and_merges(path, merges_path, split_pattern, special_tokens, eos_token)
    if split_pattern is not None or special_tokens is not None:
        raise LmforgeError(
            f"{path} is a tokenizer.json, which stores its own split pattern and special tokens; drop those options"
        )
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as error:  # the Rust parser raises a bare Exception
        raise LmforgeError(f"{path} is not a valid tokenizer.json: {error}") from None
    return Tokenizer(backend, eos_token=eos_token or _configured_eos_token(path.parent))


def _looks_like_rank_file(path: Path) -> bool:
    with open(path, "rb") as file:
        return bool(_RANK_LINE.match(file.readline(4096)))


def _configured_eos_token(directory: Path) -> str | None:
    """The eos token a Hugging Face model directory names in tokenizer_config.json, if any."""
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    try:
        eos = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) else None


def _from_rank_file(
    path: Path, split_pattern: str | None, special_tokens: dict[str, int] | None, eos_token: str | None
) -> Tokenizer:
    vocab, merges = ranks_to_vocab_and_merges(read_ranks(path), path)
    # No `ignore_merges` for tiktoken's whole-piece shortcut: each merge is the pair tiktoken's own loop
    # leaves, so a piece that is a token merges into it anyway, and the shortcut would also turn a piece
    # equal to a special token's text into its id when special tokens are not allowed.
    return _build(vocab, merges, special_tokens, split_pattern, eos_token, path)


def _from_vocab_and_merges(
    vocab_path: Path, merges_path: Path, split_pattern: str | None, special_tokens: dict[str, int] | None, eos_token: str | None
) -> Tokenizer:
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LmforgeError(f"{vocab_path} is not valid JSON: {error}") from None
    if not isinstance(vocab, dict) or not all(isinstance(key, str) and type(value) is int for key, value in vocab.items()):
        raise LmforgeError(f"{vocab_path} must be a JSON object mapping token strings to integer ids")
    merges: list[tuple[str, str]] = []
    with open(merges_path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if not line or (line_number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(part in vocab for part in parts) or parts[0] + parts[1] not in vocab:
                raise LmforgeError(
                    f"{merges_path}:{line_number}: {line[:60]!r} is not a merge of two vocab.json tokens into a third; "
                    "are the vocab and merges files from the same tokenizer?"
                )
            merges.append((parts[0], parts[1]))
    return _build(vocab, merges, special_tokens, split_pattern, eos_token, vocab_path)


def _build(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    special_tokens: dict[str, int] | None,
    split_pattern: str | None,
    eos_token: str | None,
    source: Path,
) -> Tokenizer:
    """A byte-level BPE tokenizer from vocab + merges, with special tokens placed at their ids."""
    if special_tokens is None:
        special_tokens = {"<|endoftext|>": vocab.get("<|endoftext|>", max(vocab.values(), default=-1) + 1)}
    vocab = dict(vocab)
    token_at_id = {token_id: token for token, token_id in vocab.items()}
    for content, token_id in special_tokens.items():
        holder = token_at_id.get(token_id, content)
        if holder != content or vocab.get(content, token_id) != token_id:
            raise LmforgeError(
                f"special token {content!r} cannot take id {token_id} in {source}: "
                f"that id belongs to {holder!r} or the token already has id {vocab.get(content)}; choose a free id"
            )
        vocab[content] = token_id
    model = models.BPE(vocab, merges)
    backend = byte_level_tokenizer(model, split_pattern or GPT2_SPLIT_PATTERN)
    backend.add_special_tokens([special_token(content) for content in special_tokens])
    return Tokenizer(backend, eos_token=eos_token)
