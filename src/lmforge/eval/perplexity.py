"""Perplexity and bits per byte of a model over one long token stream, each token scored once.

The stream is cut into windows of `context_length` inputs (and the same number of targets, shifted
by one) starting every `stride` tokens. The first window scores all its targets; every later
window scores only its last `stride` targets, the ones no earlier window reached, so each token
is predicted exactly once and from at least `context_length - stride + 1` tokens of left context.
With `stride == context_length` the windows do not overlap (the cheapest pass, and what training
validation uses); a smaller stride buys more context per prediction for more compute. The first
token of the stream has nothing before it and is never scored. The last window may be shorter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.runtime import autocast
from lmforge.tokenizer import Tokenizer

_DECODE_CHUNK_TOKENS = 1 << 20  # decode this many tokens at a time when counting bytes


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Summed negative log-likelihood over the scored tokens; sums so that ranks or splits can add up."""

    nats: float
    tokens: int
    bytes: int | None = None  # UTF-8 bytes of the scored text, when known

    @property
    def loss(self) -> float:
        """Mean cross-entropy per scored token, in nats."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        try:
            return math.exp(self.loss)
        except OverflowError:
            return math.inf

    @property
    def bits_per_byte(self) -> float | None:
        """Tokenizer-independent: the same text costs the same bytes whatever the vocabulary."""
        if not self.bytes:
            return None
        return self.nats / (math.log(2) * self.bytes)

    def to_dict(self) -> dict[str, float | int | None]:
        """Fields for JSON, which has no infinity: a perplexity too large for a float is None."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity if self.perplexity < math.inf else None,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nats": self.nats,
        }


def check_windows(context_length: int, stride: int) -> None:
    """Fail early on window settings that would skip tokens or score none."""
    if context_length < 1:
        raise LmforgeError(f"context length must be at least 1, got {context_length}")
    if not 1 <= stride <= context_length:
        raise LmforgeError(
            f"stride {stride} must be between 1 and the context length {context_length}: "
            "a larger stride would leave tokens between windows unscored"
        )


def window_starts(scored_tokens: int, context_length: int, stride: int) -> list[int]:
    """Start offsets of the windows that together score `scored_tokens` predictions."""
    check_windows(context_length, stride)
    if scored_tokens < 1:
        return []
    later_windows = max(0, math.ceil((scored_tokens - context_length) / stride))
    return [index * stride for index in range(1 + later_windows)]


def evaluate_perplexity(
    model: nn.Module,
    token_ids: np.ndarray | torch.Tensor,
    context_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Score every token of `token_ids` but the first, with sliding windows (see the module docstring).

    `token_ids` is one flat sequence (a numpy array, memmap or tensor; documents joined by EOS, as
    in the shards). The model runs under `no_grad` in eval mode on its own device, and is put back
    in training mode afterwards if it was training. `autocast_dtype` (e.g. torch.bfloat16) runs the
    forward under autocast; the loss itself is always summed in fp32.
    """
    stride = context_length if stride is None else stride
    check_windows(context_length, stride)
    if batch_size < 1:
        raise LmforgeError(f"batch size must be at least 1, got {batch_size}")
    tokens = _flat_ids(token_ids)
    if tokens.size < 2:
        raise LmforgeError(f"{tokens.size} token(s) is too few to score: the first token has no prediction, give at least 2")
    scored = tokens.size - 1
    starts = window_starts(scored, context_length, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    bar = tqdm(total=scored, unit="tok", unit_scale=True, desc="perplexity", disable=not progress, leave=False)
    try:
        with torch.no_grad(), autocast(device, autocast_dtype):
            for batch_starts in _batches_of_equal_length(starts, scored, context_length, batch_size):
                length = min(context_length, scored - batch_starts[0])
                offsets = np.asarray(batch_starts)[:, None] + np.arange(length + 1)[None, :]
                window = torch.from_numpy(tokens[offsets].astype(np.int64)).to(device)
                inputs, targets = window[:, :-1], window[:, 1:]
                logits = model(inputs)
                losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view(targets.shape)
                # Window 0 scores from its first target; later windows only the last `stride` targets.
                first_new = [0 if start == 0 else context_length - stride for start in batch_starts]
                mask = torch.arange(length, device=device)[None, :] >= torch.tensor(first_new, device=device)[:, None]
                nats += (losses.double() * mask).sum()
                bar.update(sum(length - first for first in first_new))
    finally:
        bar.close()
        model.train(was_training)
    return PerplexityResult(nats=float(nats), tokens=scored)


def _flat_ids(token_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """The ids as a 1-D numpy array, left in their dtype (a uint16 memmap stays on disk until a window is read)."""
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    array = np.asarray(token_ids)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise TypeError(f"token_ids must be a flat sequence of integer ids, got shape {array.shape} dtype {array.dtype}")
    return array


def _batches_of_equal_length(starts: list[int], scored: int, context_length: int, batch_size: int) -> Iterator[list[int]]:
    """Windows in batches; only the last window can be short, so it gets a batch of its own."""
    full = [start for start in starts if start + context_length <= scored]
    for index in range(0, len(full), batch_size):
        yield full[index:index + batch_size]
    if len(full) < len(starts):
        yield starts[len(full):]


def count_text_bytes(tokenizer: Tokenizer, token_ids: np.ndarray) -> int:
    """UTF-8 bytes of the text `token_ids` decode to, special tokens (EOS between documents)
    counting zero: the bytes of the documents themselves, the denominator of bits per byte.

    The ids are decoded in runs between special tokens, so a multi-byte character is never cut
    between two decode calls (byte-level BPE may split one character over several tokens).
    """
    special_ids = np.asarray(sorted(tokenizer.special_tokens.values()), dtype=np.int64)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    boundaries = np.flatnonzero(np.isin(token_ids, special_ids))
    runs: list[list[int]] = []
    pending = 0
    total = 0
    for run in np.split(token_ids, boundaries):
        run = run[1:] if run.size and np.isin(run[0], special_ids) else run
        if run.size:
            runs.append(run.tolist())
            pending += run.size
        if pending >= _DECODE_CHUNK_TOKENS:
            total += _decoded_bytes(tokenizer, runs)
            runs, pending = [], 0
    return total + _decoded_bytes(tokenizer, runs)


def _decoded_bytes(tokenizer: Tokenizer, runs: list[list[int]]) -> int:
    if not runs:
        return 0
    texts = tokenizer.backend.decode_batch(runs, skip_special_tokens=True)
    return sum(len(text.encode("utf-8")) for text in texts)
