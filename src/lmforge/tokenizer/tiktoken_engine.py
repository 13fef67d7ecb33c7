"""tiktoken's encoder, used for a vocabulary when it provably returns the Hugging Face backend's ids.

Both libraries split text into pieces with a regex and run BPE on each piece's bytes. tiktoken joins
the adjacent pair whose concatenation has the lowest rank; Hugging Face joins the adjacent pair that
comes first in its merges list. `tiktoken_refusal` checks that the two agree, naming the first of
these conditions that fails:

1. The same pieces. No normalizer; the pre-tokenizer is byte-level with a split pattern in
   `SAME_SPLIT_PATTERNS` (lmforge's Split + ByteLevel, or ByteLevel's built-in regex, which is
   GPT-2's): patterns that match every character (tiktoken drops what its pattern skips, Hugging
   Face keeps it) and that the tests show Oniguruma and fancy-regex split alike. No truncation or
   padding, and no post-processor that changes ids.
2. A plain byte-level BPE: no dropout, unknown token, subword prefix or suffix, or byte fallback,
   and a token for each of the 256 bytes.
3. Merge order is rank order: each merge makes a token no other merge makes, from parts that are
   bytes or tokens of earlier merges, and ids grow with the merge index. Ids then serve as ranks
   (a byte's id is never compared: every pair joins into a multi-byte token).
4. Every merged token t encodes to itself (Hugging Face BPE on t's bytes, whole-piece shortcut
   off). With 3, this says that the merge making t is the pair left when t's bytes are merged
   with the lower-ranked merges alone. By induction on rank, the adjacent pair tiktoken joins
   (lowest rank, leftmost) is then always the merge Hugging Face applies: a pair whose
   concatenation t is a token but not t's merge can only appear after steps that, confined to
   t's bytes, would have made t itself first. So the two loops take the same steps on every
   piece, and both shortcuts for a piece that is a whole token (tiktoken's, and Hugging Face's
   `ignore_merges`) return what merging returns anyway.
5. Tokens that no merge makes (the special tokens that trainers and loaders also put in the
   vocabulary) cannot come out of BPE: that needs `ignore_merges` off, else a piece equal to one
   of them would be taken whole.
6. Added tokens are all special and matched verbatim (no stripping, not single-word), and none is
   a prefix of another: then Hugging Face's longest match and tiktoken's first-alternative match
   find the same special token at the same place. `allowed_special=False` (Hugging Face's
   `encode_special_tokens`) is tiktoken's `encode_ordinary`.

Text holding lone surrogates (not valid Unicode; never read from a UTF-8 file) is the one
difference: tiktoken encodes U+FFFD in their place, Hugging Face raises TypeError.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.tokenizer.byte_level import BYTE_ALPHABET, GPT2_SPLIT_PATTERN, symbols_to_bytes

# Split patterns whose pieces are the same under both regex engines (tests/tokenizer/test_tiktoken_engine.py).
SAME_SPLIT_PATTERNS = frozenset({GPT2_SPLIT_PATTERN})
_PLAIN_BPE = {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "byte_fallback": False}
_NEUTRAL_POST_PROCESSORS = (None, "ByteLevel")  # ByteLevel only trims offsets
_BYTE_SYMBOLS = frozenset(BYTE_ALPHABET)
MIN_CHARACTERS_PER_RUN = 16_384  # a smaller run costs more to hand to a thread than it saves
RUNS_PER_THREAD = 8


class TiktokenEngine:
    """Encodes with tiktoken's core; build one with `tiktoken_engine`, which checks it is exact."""

    def __init__(self, encoding: tiktoken.Encoding, special_tokens: Sequence[str]) -> None:
        self._encoding = encoding
        self._special_tokens = frozenset(special_tokens)

    def encode(self, text: str, allowed_special: bool) -> list[int]:
        if allowed_special:
            return self._encoding.encode(text, allowed_special=self._special_tokens, disallowed_special=())
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], allowed_special: bool) -> list[list[int]]:
        """`encode` on each text, over threads: tiktoken releases the GIL while it encodes."""
        return map_over_threads(lambda text: self.encode(text, allowed_special), texts)


def tiktoken_engine(backend: HFTokenizer) -> TiktokenEngine | None:
    """A tiktoken encoder giving exactly `backend`'s ids, or None when that cannot be shown."""
    spec = json.loads(backend.to_str())
    if tiktoken_refusal(spec) is not None:
        return None
    vocab, merges = spec["model"]["vocab"], _merges(spec["model"])
    ranks = {symbols_to_bytes(symbol): vocab[symbol] for symbol in BYTE_ALPHABET}
    ranks.update((symbols_to_bytes(left + right), vocab[left + right]) for left, right in merges)
    special_tokens = {added["content"]: added["id"] for added in spec["added_tokens"]}
    encoding = tiktoken.Encoding(
        "lmforge", pat_str=_split_pattern(spec["pre_tokenizer"]), mergeable_ranks=ranks, special_tokens=special_tokens
    )
    return TiktokenEngine(encoding, list(special_tokens))


def tiktoken_refusal(spec: dict) -> str | None:
    """Why tiktoken could give other ids than this tokenizer.json `spec`, or None when it cannot
    (the conditions are in this module's docstring)."""
    return next((reason for check in _CHECKS if (reason := check(spec)) is not None), None)


def _same_pieces(spec: dict) -> str | None:
    if spec.get("normalizer") is not None:
        return f"a {spec['normalizer'].get('type')} normalizer changes the text before it is split"
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return "the pre-tokenizer is not a byte-level regex split"
    if pattern not in SAME_SPLIT_PATTERNS:
        return f"split pattern {pattern[:40]!r}... is not one both regex engines are known to split alike"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return "truncation or padding is set"
    post_processor = (spec.get("post_processor") or {}).get("type")
    if post_processor not in _NEUTRAL_POST_PROCESSORS:
        return f"a {post_processor} post-processor"
    return None


def _split_pattern(pre_tokenizer: dict | None) -> str | None:
    """The regex a byte-level pre-tokenizer splits with; None for any other pre-tokenizer."""
    if pre_tokenizer is None:
        return None
    if pre_tokenizer.get("type") == "ByteLevel":
        plain = pre_tokenizer.get("use_regex", True) and not pre_tokenizer.get("add_prefix_space")
        return GPT2_SPLIT_PATTERN if plain else None  # ByteLevel's built-in regex is GPT-2's
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    if (
        split.get("type") != "Split" or "Regex" not in split.get("pattern", {}) or split.get("behavior") != "Isolated"
        or split.get("invert") or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True) or byte_level.get("add_prefix_space")
    ):
        return None
    return split["pattern"]["Regex"]


def _plain_byte_level_bpe(spec: dict) -> str | None:
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        return f"the model is {model.get('type')}, not BPE"
    options = [name for name, plain in _PLAIN_BPE.items() if model.get(name, plain) != plain]
    if options:
        return f"the BPE model sets {', '.join(options)}"
    missing = _BYTE_SYMBOLS.difference(model["vocab"])
    if missing:
        return f"{len(missing)} of the 256 bytes have no token"
    return None


def _merge_order_is_rank_order(spec: dict) -> str | None:
    vocab, merges = spec["model"]["vocab"], _merges(spec["model"])
    made: set[str] = set()
    previous_id = -1
    for index, (left, right) in enumerate(merges):
        token = left + right
        if token not in vocab or token in made:
            return f"merge {index} ({left} {right}) makes a token that is not in the vocabulary or that an earlier merge makes"
        if any(part not in made if len(part) > 1 else part not in _BYTE_SYMBOLS for part in (left, right)):
            return f"merge {index} ({left} {right}) uses a token that is neither a byte nor made by an earlier merge"
        if vocab[token] <= previous_id:
            return f"merge {index} makes id {vocab[token]} after id {previous_id}: ids are not in merge order"
        made.add(token)
        previous_id = vocab[token]
    return None


def _merged_tokens_encode_to_themselves(spec: dict) -> str | None:
    vocab, merges = spec["model"]["vocab"], _merges(spec["model"])
    checker = HFTokenizer(models.BPE(vocab, merges))  # no pre-tokenizer: each token is one piece
    tokens = [left + right for left, right in merges]
    for token, encoding in zip(tokens, checker.encode_batch(tokens, add_special_tokens=False)):
        if encoding.ids != [vocab[token]]:
            return f"token {token!r} encodes as ids {encoding.ids}, not as itself"
    return None


def _unmerged_tokens_unreachable(spec: dict) -> str | None:
    model = spec["model"]
    if not model.get("ignore_merges"):
        return None
    made = {left + right for left, right in _merges(model)}
    unmerged = [token for token in model["vocab"] if len(token) > 1 and token not in made]
    if unmerged:
        return f"ignore_merges is on and {len(unmerged)} tokens (first {unmerged[0]!r}) come from no merge"
    return None


def _special_tokens_match_alike(spec: dict) -> str | None:
    added = spec.get("added_tokens", [])
    for token in added:
        if not token["special"] or token["lstrip"] or token["rstrip"] or token["single_word"] or not token["content"]:
            return f"added token {token['content']!r} is not a special token matched verbatim"
    contents = sorted(token["content"] for token in added)
    for shorter, longer in itertools.pairwise(contents):
        if longer.startswith(shorter):
            return f"special token {shorter!r} is a prefix of {longer!r}"
    return None


_CHECKS: tuple[Callable[[dict], str | None], ...] = (
    _same_pieces, _plain_byte_level_bpe, _merge_order_is_rank_order, _unmerged_tokens_unreachable,
    _special_tokens_match_alike, _merged_tokens_encode_to_themselves,  # the one that encodes the vocabulary: last
)


def _merges(model: dict) -> list[tuple[str, str]]:
    """tokenizer.json stores merges as ["a", "b"] pairs, or as "a b" strings in older files."""
    return [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]


def encoding_threads() -> int:
    """Cores this process may use; 1 when TOKENIZERS_PARALLELISM is off, as in `prepare`'s worker
    processes, which already share the cores among themselves."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def map_over_threads(function: Callable[[str], list[int]], texts: Sequence[str]) -> list[list[int]]:
    """`function` on each text, in order. The texts are cut into contiguous runs of about equal
    characters, a few per thread, so a thread slowed by a long document or a busy core leaves its
    share of later runs to the others, and each run costs one task, not one per text."""
    lengths = list(itertools.accumulate(len(text) for text in texts))
    total = lengths[-1] if lengths else 0
    threads = min(encoding_threads(), len(texts), total // MIN_CHARACTERS_PER_RUN)
    if threads <= 1:
        return [function(text) for text in texts]
    parts = min(threads * RUNS_PER_THREAD, len(texts), total // MIN_CHARACTERS_PER_RUN)
    edges = [0, *(bisect.bisect_right(lengths, total * part // parts) for part in range(1, parts)), len(texts)]
    runs = [texts[start:end] for start, end in zip(edges, edges[1:]) if end > start]
    with ThreadPoolExecutor(threads) as pool:
        encoded_runs = pool.map(lambda run: [function(text) for text in run], runs)
        return [ids for encoded in encoded_runs for ids in encoded]
