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
              device: torch.device | str, slots: Slots | None = None) -> KVCache | SlidingKVCache | SlotKVCache:
    """The cache for a layer whose queries see `window` positions (None: all of them); with `slots`,
    one slot a batch row for sequences of their own lengths."""
    if slots is not None:
        return SlotKVCache([shape[1:] for shape in shapes], slots, shapes[0][0], window, max_length, dtype, device)
    if window is None:
        return KVCache(shapes, max_length, dtype, device)
    return SlidingKVCache(shapes, window, max_length, dtype, device)


class Slots:
    """Where one forward pass of a batch of independent sequences reads and writes: input row i
    belongs to cache slot `rows[i]` and its first new token sits at position `starts[i]`. Shared
    by every layer's `SlotKVCache`, so the masks are built once a pass, one per window size."""

    def __init__(self) -> None:
        self.rows = self.starts = self.positions = None
        self.key_length = 0
        self._visible: dict[int | None, torch.Tensor] = {}
        # A compiled decode step (`Engine(compile=True)`) runs with `static` set: the caches return
        # every position of their capacity, so the step's shapes do not change from token to token,
        # and the mask hides what is not written (the caller reserves the capacity beforehand).
        self.static = False

    def set(self, rows: torch.Tensor, starts: torch.Tensor, steps: int) -> torch.Tensor:
        """Prepare a pass of `steps` tokens a row; the positions [batch, steps] of its tokens."""
        self.rows, self.starts = rows, starts
        self.positions = starts[:, None] + torch.arange(steps, device=starts.device)
        self.key_length = int(starts.max()) + steps
        self.contiguous = bool((rows == torch.arange(len(rows), device=rows.device)).all())
        # Rows all at one position (one sequence, or a batch admitted together) see exactly what a
        # single sequence sees: attention's own causal and window rules apply, and no mask is built.
        self.uniform = bool((starts == starts[0]).all())
        self._visible = {}
        return self.positions

    def capacity_mask(self, capacity: int, window: int | None) -> torch.Tensor:
        """`visible` over all `capacity` positions of a cache, for a compiled step (not memoised:
        the step computes it in its graph)."""
        keys = torch.arange(capacity, device=self.positions.device)
        queries = self.positions[:, None, :, None]
        seen = keys <= queries
        return seen & (keys > queries - window) if window is not None else seen

    def visible(self, window: int | None) -> torch.Tensor:
        """[batch, 1, steps, key_length] booleans: each row's queries see the keys at or before their
        own position (and, with a window, after it minus the window); later keys are another
        occupant's leftovers or not written yet."""
        if window not in self._visible:
            keys = torch.arange(self.key_length, device=self.positions.device)
            queries = self.positions[:, None, :, None]
            seen = keys <= queries
            if window is not None:
                seen &= keys > queries - window
            self._visible[window] = seen
        return self._visible[window]


class SlotKVCache:
    """A layer's cache for many sequences at once, each in its own slot at its own length
    (continuous batching). Local layers keep every position too: their window is a mask here."""

    def __init__(self, shapes: list[tuple[int, ...]], slots: Slots, n_slots: int, window: int | None, max_length: int,
                 dtype: torch.dtype, device: torch.device | str, initial_length: int = 256) -> None:
        """`shapes` gives each tensor's shape without its batch and time dimensions, e.g. (heads, head_dim)."""
        self.slots, self.window, self.max_length = slots, window, max_length
        capacity = min(initial_length, max_length)
        self.buffers = [torch.zeros(n_slots, *shape[:-1], capacity, shape[-1], dtype=dtype, device=device) for shape in shapes]

    @property
    def length(self) -> int:
        return self.slots.key_length

    @property
    def visible(self) -> torch.Tensor | None:
        """Each row's mask, or None when the rows are uniform (`Slots.uniform`)."""
        if self.slots.static:
            return self.slots.capacity_mask(self.buffers[0].shape[-2], self.window)
        return None if self.slots.uniform else self.slots.visible(self.window)

    def reserve(self, length: int) -> None:
        """Grow every buffer's time dimension (doubling, up to `max_length`) to hold `length` positions."""
        capacity = self.buffers[0].shape[-2]
        if length <= capacity:
            return
        if length > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {length} requested")
        grown = min(self.max_length, max(length, 2 * capacity))
        for index, buffer in enumerate(self.buffers):
            bigger = buffer.new_zeros(*buffer.shape[:-2], grown, buffer.shape[-1])
            bigger[..., :capacity, :] = buffer
            self.buffers[index] = bigger

    def append(self, *new: torch.Tensor) -> list[torch.Tensor]:
        """Write `new` ([batch, ..., steps, dim]) at each row's slot and positions; return every row's
        keys up to the longest row's end, which `visible` masks per row."""
        slots = self.slots
        if not slots.static:
            self.reserve(slots.key_length)
        rows = slots.rows[:, None]
        for buffer, tensor in zip(self.buffers, new):
            # Advanced indices on dims 0 and -2 put their [batch, steps] shape first.
            buffer.transpose(1, -2)[rows, slots.positions] = tensor.transpose(1, -2)
        if slots.static:  # rows 0..n-1 (the engine's running sequences), every position
            return [buffer[:len(slots.rows)] for buffer in self.buffers]
        if slots.contiguous:
            return [buffer[:len(slots.rows), ..., :slots.key_length, :] for buffer in self.buffers]
        return [buffer[slots.rows, ..., :slots.key_length, :] for buffer in self.buffers]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot `source`'s first `length` positions into slot `target`."""
        for buffer in self.buffers:
            buffer[target, ..., :length, :] = buffer[source, ..., :length, :]

    def write(self, slot: int, *tensors: torch.Tensor) -> None:
        """Put `tensors` ([..., time, dim], no batch) at slot `slot`'s first positions (a prefix)."""
        self.reserve(tensors[0].shape[-2])
        for buffer, tensor in zip(self.buffers, tensors):
            buffer[slot, ..., :tensor.shape[-2], :] = tensor
