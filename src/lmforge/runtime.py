"""Choosing a device and a precision for the machine at hand, and running under that precision."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from lmforge.errors import LmforgeError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise LmforgeError(f"--device '{device}' is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("--device cuda was asked for, but no CUDA GPU is available")
    return resolved


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmuls (AMX or AVX512-BF16), which make bf16 the fast path."""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AMX or
    AVX512-BF16), else fp32 — on other CPUs bf16 matmuls are emulated and far slower."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device | str, precision: str | torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to bf16 or fp16 (a precision name or a dtype); fp32 or None runs as it is. Every
    mixed-precision forward pass (training, evaluation, rollouts, scoring) takes its context from
    here, so they all make the same choice."""
    dtype = DTYPES[precision] if isinstance(precision, str) else precision
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
