"""Choosing a device and a precision for the machine at hand."""

from __future__ import annotations

from typing import Literal

import torch

from lmforge.errors import LmforgeError

Precision = Literal["fp32", "bf16", "fp16"]
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
