"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak."""

from __future__ import annotations

import time

import torch


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Dense matmul FLOP/s on this device and dtype: the ceiling a training step can approach.
    The matrix grows until one product takes a tenth of a second (large enough to be efficient,
    small enough to stay quick where a dtype has no fast kernels); the best rate of at least three
    products is kept (one slow product, a neighbour's burst of work, must not set the ceiling)."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        torch.mm(a, b)  # warm-up: kernel selection, allocation
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        if time.perf_counter() - start > 0.1 or size >= 8192:
            break
        size *= 2
    best, deadline, rounds = 0.0, time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline or rounds < 3:
        rounds += 1
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
