"""`lmforge tokenizer train | encode | decode`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

if TYPE_CHECKING:  # imported where used, so `lmforge tokenizer` starts fast
    import numpy as np

    from lmforge.tokenizer import Tokenizer


def train(
    *,
    input: list[str],
    vocab_size: int,
    out: Path,
    text_field: str = "text",
    sample_bytes: int = 100_000_000,
    min_frequency: int = 2,
    special_tokens: list[str] | None = None,
) -> list[dict]:
    """Train a byte-level BPE tokenizer on a corpus sample and write OUT/tokenizer.json.

    Then print characters per token on the English and Chinese documents of the sample (a document
    counts as the script most of its letters are in); higher means shorter sequences for the same text.

    Example:
        lmforge tokenizer train --input corpus.txt --vocab-size 8000 --out tok
        lmforge tokenizer train --input '[en/, "zh/*.jsonl.gz"]' --text-field content --vocab-size 32000 --out tok
        lmforge tokenizer train --input en.txt --input zh.txt --vocab-size 32000 --out tok
        lmforge tokenizer train --input books/ --vocab-size 16000 --sample-bytes 20000000 --min-frequency 5 --out tok
        lmforge tokenizer train --input "logs/*.txt.gz" --vocab-size 4000 --special-tokens '["<|endoftext|>", "<pad>"]' --out tok

    Args:
        input: Text files (.txt, .jsonl, optionally .gz), directories searched recursively, or glob patterns.
        vocab_size: Tokens in the vocabulary: 256 bytes + special tokens + learned merges.
        out: Directory to write tokenizer.json into (created if missing).
        text_field: The field holding the text in .jsonl records.
        sample_bytes: At most this many bytes of text are read, shared across the files by size.
        min_frequency: A pair must occur this often in the sample to become a token.
        special_tokens: Special tokens, repeating the option or as a JSON list (default: <|endoftext|>, <|im_start|>,
            <|im_end|>); the eos token is <|endoftext|> when listed, else the first.
    """
    from lmforge.tokenizer import DEFAULT_SPECIAL_TOKENS, train_tokenizer
    from lmforge.tokenizer.compression import chars_per_token
    from lmforge.tokenizer.corpus import sample_documents
    from lmforge.tokenizer.train import check_vocab_size

    special_tokens = DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens
    check_vocab_size(vocab_size, special_tokens)
    documents = sample_documents(input, sample_bytes=sample_bytes, text_field=text_field)
    sample_size = sum(len(document.encode("utf-8")) for document in documents)
    print(f"training on {len(documents):,} documents ({sample_size / 1e6:.1f} MB)", file=sys.stderr)
    tokenizer = train_tokenizer(
        documents,
        vocab_size,
        special_tokens,
        min_frequency=min_frequency,
        show_progress=sys.stderr.isatty(),
    )
    path = tokenizer.save(out)
    rows = chars_per_token(tokenizer, documents)
    print(f"wrote {path} ({tokenizer.vocab_size:,} tokens, eos id {tokenizer.eos_id})")
    print(f"{'text':<10}{'documents':>12}{'characters':>14}{'tokens':>14}{'chars/token':>13}")
    for row in rows:
        ratio = "-" if row.chars_per_token is None else f"{row.chars_per_token:.2f}"
        print(f"{row.script:<10}{row.documents:>12,}{row.characters:>14,}{row.tokens:>14,}{ratio:>13}")
    return [{"script": row.script, "documents": row.documents, "characters": row.characters,
             "tokens": row.tokens, "chars_per_token": row.chars_per_token} for row in rows]


def encode(*, tokenizer: str, text: str | None = None, file: str | None = None, allowed_special: bool = True) -> list[int]:
    """Print the token ids of a text as a JSON list.

    Example:
        lmforge tokenizer encode --tokenizer tok/tokenizer.json --text "Hello world"
        lmforge tokenizer encode --tokenizer gpt2.tiktoken --file story.txt
        lmforge tokenizer encode --tokenizer tok --text "<|endoftext|>" --allowed-special false

    Args:
        tokenizer: A tokenizer.json, a directory holding one (or vocab.json + merges.txt), or a .tiktoken file.
        text: The text to encode.
        file: A UTF-8 file whose whole content is encoded (instead of --text).
        allowed_special: Encode special-token strings such as <|endoftext|> as their single ids (false: as plain text).
    """
    from lmforge.tokenizer import load_tokenizer

    if (text is None) == (file is None):
        raise LmforgeError("give exactly one of --text TEXT or --file FILE")
    if file is not None:
        text = _read_text(file, "text")
    ids = load_tokenizer(tokenizer).encode(text, allowed_special=allowed_special)
    print(json.dumps(ids))
    return ids


def decode(*, tokenizer: str, ids: str | None = None, file: str | None = None) -> None:
    """Print the text of token ids: a JSON list, or a file holding one, or a token shard.

    A shard's documents are printed as they are decoded, each followed by its end-of-sequence token.

    Example:
        lmforge tokenizer decode --tokenizer tok/tokenizer.json --ids '[15496, 995]'
        lmforge tokenizer decode --tokenizer tok --file ids.json
        lmforge tokenizer decode --tokenizer data/tokenizer.json --file data/train-00000.bin | head

    Args:
        tokenizer: A tokenizer.json, a directory holding one (or vocab.json + merges.txt), or a .tiktoken file.
        ids: Token ids as a JSON list, e.g. '[15496, 995]'.
        file: A file of ids: a JSON list, or a .bin token shard written by `lmforge prepare` (its dtype is
            read from the manifest.json beside it).
    """
    from lmforge.tokenizer import load_tokenizer

    if (ids is None) == (file is None):
        raise LmforgeError("give exactly one of --ids IDS or --file FILE")
    if file is None:
        print(load_tokenizer(tokenizer).decode(_json_ids(ids, "--ids")))
    elif Path(file).suffix == ".bin":
        shard, prepared_vocab_size = _read_shard(Path(file))
        loaded = load_tokenizer(tokenizer)
        if loaded.vocab_size != prepared_vocab_size:
            raise LmforgeError(
                f"--file {file} was prepared with a {prepared_vocab_size:,}-token vocabulary, but --tokenizer has "
                f"{loaded.vocab_size:,}; decode with the tokenizer prepared with it ({Path(file).parent / 'tokenizer.json'})"
            )
        for text in _decode_by_documents(loaded, shard):
            sys.stdout.write(text)
        print()
    else:
        print(load_tokenizer(tokenizer).decode(_json_ids(_read_text(file, "text"), f"--file {file}")))


def _read_text(file: str, what: str) -> str:
    """The UTF-8 content of a --file option, with a message that names the file when it cannot be read."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"--file {file} does not exist") from None
    except UnicodeDecodeError as error:
        raise LmforgeError(f"--file {file} is not UTF-8 {what} (byte {error.start}); convert it first") from None
    except OSError as error:
        raise LmforgeError(f"--file {file}: cannot read: {error.strerror}") from None


def _json_ids(text: str, source: str) -> list[int]:
    try:
        token_ids = json.loads(text)
    except json.JSONDecodeError:
        token_ids = None
    if not isinstance(token_ids, list) or not all(type(token_id) is int for token_id in token_ids):
        shard_hint = " (or be a .bin token shard)" if source.startswith("--file") else ""
        raise LmforgeError(f"{source} must be a JSON list of integers such as '[15496, 995]'{shard_hint}, got {text[:60]!r}")
    return token_ids


def _read_shard(path: Path) -> tuple[np.ndarray, int]:
    """A .bin shard's ids (memory-mapped, not read) and the vocabulary size it was prepared with,
    both from the manifest.json beside it: a shard is raw ids with no header."""
    import numpy as np

    from lmforge.data.shards import DTYPES, MANIFEST_NAME, read_manifest

    if not path.is_file():
        raise LmforgeError(f"--file {path} does not exist")
    if not (path.parent / MANIFEST_NAME).is_file():
        raise LmforgeError(
            f"--file {path} is a .bin token shard, but {path.parent} has no {MANIFEST_NAME} to give its dtype; "
            "decode shards inside the directory `lmforge prepare` wrote"
        )
    manifest = read_manifest(path.parent)
    dtype = DTYPES[manifest["dtype"]]
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise LmforgeError(f"--file {path} is {size} bytes, not a whole number of {manifest['dtype']} ids; the shard is damaged")
    ids = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)  # mmap cannot map 0 bytes
    return ids, manifest["vocab_size"]


def _decode_by_documents(tokenizer: Tokenizer, ids: np.ndarray, run_tokens: int = 1 << 20) -> Iterator[str]:
    """The text of `ids` in pieces of about `run_tokens` ids, each ending just after an eos (so no
    character is cut in two), so a 100M-token shard never becomes one Python list."""
    import numpy as np

    ends = np.flatnonzero(ids == tokenizer.eos_id) + 1 if tokenizer.eos_id is not None else np.zeros(0, dtype=np.int64)
    start = 0
    while start < len(ids):
        index = int(np.searchsorted(ends, start + run_tokens))
        end = int(ends[index]) if index < len(ends) else len(ids)
        yield tokenizer.decode(ids[start:end].tolist())
        start = end
