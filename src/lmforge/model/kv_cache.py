"""Per-layer caches for incremental decoding.

A cache holds whatever tensors an attention variant needs to see again: keys and values
([batch, kv_heads, time, head_dim]) for MHA/GQA/MQA, or the compressed latent and the shared rope
key ([batch, time, dim]) for MLA. Time is always dimension -2. `length` counts every position
appended, so the model can number the next ones.
"""

from __future__ import annotations

import torch


class KVCache:
    """A preallocated cache of up to `max_length` positions, for a layer that attends to all of them."""

    def __init__(self, shapes: list[tuple[int, ...]], max_length: int, dtype: torch.dtype, device: torch.device | str) -> None:
        """`shapes` gives each tensor's shape without its time dimension, e.g. (batch, heads, head_dim)."""
        self.buffers = [
            torch.zeros(*shape[:-1], max_length, shape[-1], dtype=dtype, device=device) for shape in shapes
        ]
        self.max_length = max_length
        self.length = 0

    def append(self, *new: torch.Tensor) -> list[torch.Tensor]:
        """Store `new` (time steps along dim -2) after what is cached; return everything cached so far."""
        steps = new[0].shape[-2]
        end = self.length + steps
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} requested")
        for buffer, tensor in zip(self.buffers, new):
            buffer[..., self.length:end, :] = tensor
        self.length = end
        return [buffer[..., :end, :] for buffer in self.buffers]


class SlidingKVCache:
    """The cache of a local (sliding-window) layer: the newest queries see the `window` - 1
    positions before the first of them at most, so only those are kept, however long the sequence."""

    def __init__(self, shapes: list[tuple[int, ...]], window: int, max_length: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.kept = min(window - 1, max_length)
        self.buffers = [torch.zeros(*shape[:-1], self.kept, shape[-1], dtype=dtype, device=device) for shape in shapes]
        self.length = 0

    def append(self, *new: torch.Tensor) -> list[torch.Tensor]:
        """The kept positions followed by `new` (what attention needs now); the newest `window` - 1
        of them are kept for the next call."""
        held = min(self.length, self.kept)
        visible = [torch.cat((buffer[..., self.kept - held:, :], tensor), dim=-2)
                   for buffer, tensor in zip(self.buffers, new)]
        keep = min(visible[0].shape[-2], self.kept)
        for buffer, tensor in zip(self.buffers, visible):  # newest positions at the end of the buffer
            buffer[..., self.kept - keep:, :] = tensor[..., tensor.shape[-2] - keep:, :]
        self.length += new[0].shape[-2]
        return visible


def new_cache(shapes: list[tuple[int, ...]], window: int | None, max_length: int, dtype: torch.dtype,
              device: torch.device | str) -> KVCache | SlidingKVCache:
    """The cache for a layer whose queries see `window` positions (None: all of them)."""
    if window is None:
        return KVCache(shapes, max_length, dtype, device)
    return SlidingKVCache(shapes, window, max_length, dtype, device)
