"""A preallocated per-layer cache for incremental decoding.

It holds whatever tensors an attention variant needs to see again: keys and values
([batch, kv_heads, time, head_dim]) for MHA/GQA/MQA, or the compressed latent and the shared rope
key ([batch, time, dim]) for MLA. Time is always dimension -2.
"""

from __future__ import annotations

import torch


class KVCache:
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
