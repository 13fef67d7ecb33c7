"""tiktoken rank files (`gpt2.tiktoken`, `cl100k_base.tiktoken`) as byte-level BPE vocab + merges.

A rank file lists every token's bytes (base64) with its rank; there are no merges. tiktoken encodes
by repeatedly joining the adjacent pair whose concatenation has the lowest rank. To express that as
merges, each multi-byte token is encoded by that same procedure using only the tokens ranked below
it: the two parts left at the end are the pair that forms it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer.byte_level import bytes_to_symbols


def read_ranks(path: Path) -> dict[bytes, int]:
    """Token bytes -> rank from a file of `base64 rank` lines, checked to be a byte-level BPE."""
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            except (ValueError, binascii.Error):
                raise LmforgeError(
                    f"{path}:{line_number}: expected `<base64 token> <rank>`, got {line[:60]!r}; "
                    "is this a tiktoken rank file?"
                ) from None
            if token in ranks or rank in seen_ranks or rank < 0:
                raise LmforgeError(
                    f"{path}:{line_number}: token or rank {rank} appears twice (or is negative); the file is corrupt"
                )
            ranks[token] = rank
            seen_ranks.add(rank)
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise LmforgeError(
            f"{path}: {len(missing)} of the 256 single bytes have no rank (first: 0x{missing[0]:02x}); "
            "a byte-level BPE rank file must list every byte"
        )
    return ranks


def _encode_below(token: bytes, ranks: dict[bytes, int], rank_limit: int) -> list[bytes]:
    """tiktoken's merge loop on `token`'s bytes, allowing only tokens ranked below `rank_limit`."""
    parts = [token[index:index + 1] for index in range(len(token))]
    while len(parts) > 1:
        best_index, best_rank = -1, rank_limit
        for index in range(len(parts) - 1):
            rank = ranks.get(parts[index] + parts[index + 1], rank_limit)
            if rank < best_rank:
                best_index, best_rank = index, rank
        if best_index < 0:
            break
        parts[best_index:best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def ranks_to_merges(ranks: dict[bytes, int], path: Path | str = "rank file") -> list[tuple[bytes, bytes]]:
    """The merge that creates each multi-byte token, in rank order (the order BPE applies them)."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _encode_below(token, ranks, rank)
        if len(parts) != 2:
            raise LmforgeError(
                f"{path}: token {token!r} (rank {rank}) cannot be built from two lower-ranked tokens; "
                "the file is not a BPE vocabulary"
            )
        merges.append((parts[0], parts[1]))
    return merges


def ranks_to_vocab_and_merges(
    ranks: dict[bytes, int], path: Path | str = "rank file"
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges in the byte-level alphabet, ready for a Hugging Face BPE model (id = rank)."""
    vocab = {bytes_to_symbols(token): rank for token, rank in ranks.items()}
    merges = [(bytes_to_symbols(left), bytes_to_symbols(right)) for left, right in ranks_to_merges(ranks, path)]
    return vocab, merges
