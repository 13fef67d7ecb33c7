"""Weight-only quantization schemes: what integers a weight becomes and how it comes back.

int8: one scale per output channel, symmetric, q = round(w / s) in [-127, 127], w ≈ q · s.
int4: one scale per `group_size` inputs of an output channel; asymmetric by default (q in [0, 15],
w ≈ (q − 8) · s + z with z = min + 8 s, the layout PyTorch's int4 kernels read), or symmetric
(z = 0, s = max|w| / 7). Fake quantization (QAT) computes exactly these dequantized weights in the
forward pass and lets the gradient through unchanged (the straight-through estimator).

int8 with `activations="int8"` (w8a8) also quantizes each layer's input on the fly (a scale for
each group of rows of one order of magnitude, from its range) so the CPU multiplies integers:
PyTorch's fbgemm dynamic linear, 4-6× faster than an fp32 GEMV on AVX2 where the weight-only
kernel is slower than fp32. It costs accuracy (about 2 % relative error a layer), which `eval`
shows; weight-only is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from lmforge.errors import LmforgeError

INT4_MIDPOINT = 8


@dataclass(frozen=True)
class QuantScheme:
    kind: Literal["int8", "int4"] = "int8"
    group_size: int = 32  # int4 only: inputs sharing a scale
    symmetric: bool = False  # int4 only (int8 is always symmetric)
    activations: Literal["none", "int8"] = "none"  # int8 only: dynamic int8 inputs (w8a8) on the CPU

    KINDS: ClassVar[tuple[str, ...]] = ("int8", "int4")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise LmforgeError(f"quantization scheme must be one of {', '.join(self.KINDS)}, got {self.kind!r}")
        if self.kind == "int4" and (self.group_size < 2 or self.group_size & (self.group_size - 1)):
            raise LmforgeError(f"--group-size must be a power of two (32, 64, 128, ...), got {self.group_size}")
        if self.activations not in ("none", "int8") or (self.activations == "int8" and self.kind != "int8"):
            raise LmforgeError(f"--activations int8 goes with --scheme int8 (w8a8); got {self.activations!r} with {self.kind}")

    def to_dict(self) -> dict:
        if self.kind == "int4":
            return {"scheme": self.kind, "group_size": self.group_size, "symmetric": self.symmetric}
        return {"scheme": self.kind, **({"activations": self.activations} if self.activations != "none" else {})}

    @classmethod
    def from_dict(cls, values: dict) -> QuantScheme:
        return cls(values["scheme"], values.get("group_size", 32), values.get("symmetric", False),
                   values.get("activations", "none"))

    def fits(self, in_features: int) -> bool:
        """Whether a layer with `in_features` inputs can take this scheme (int4 groups must tile them)."""
        return self.kind == "int8" or in_features % self.group_size == 0


@dataclass
class Quantized:
    """A weight [out, in] as integers and the floats that restore it: int8 codes and scales [out],
    or int4 codes (0..15, one a byte) with scales and zeros [out, in / group_size]."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None


def quantize(weight: torch.Tensor, scheme: QuantScheme) -> Quantized:
    w = weight.detach().float()
    if scheme.kind == "int8":
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        return Quantized((w / scales[:, None]).round().clamp(-127, 127).to(torch.int8), scales)
    out_features, in_features = w.shape
    if in_features % scheme.group_size:
        raise LmforgeError(f"int4 groups of {scheme.group_size} do not tile {in_features} inputs")
    groups = w.reshape(out_features, in_features // scheme.group_size, scheme.group_size)
    if scheme.symmetric:
        scales = (groups.abs().amax(dim=-1) / 7).clamp(min=1e-12)
        zeros = torch.zeros_like(scales)
        codes = (groups / scales[..., None]).round().clamp(-8, 7) + INT4_MIDPOINT
    else:
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-12)
        zeros = low + INT4_MIDPOINT * scales
        codes = ((groups - low[..., None]) / scales[..., None]).round().clamp(0, 15)
    return Quantized(codes.reshape(out_features, in_features).to(torch.uint8), scales, zeros)


def dequantize(quantized: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes, scales = quantized.codes, quantized.scales.float()
    if codes.dtype == torch.int8:
        return (codes.float() * scales[:, None]).to(dtype)
    out_features, in_features = codes.shape
    groups = codes.float().reshape(out_features, scales.shape[1], -1)
    weight = (groups - INT4_MIDPOINT) * scales[..., None] + quantized.zeros.float()[..., None]
    return weight.reshape(out_features, in_features).to(dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two int4 codes a byte, the even input in the low nibble: [out, in] → [out, in / 2]."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1)
    return codes.reshape(packed.shape[0], -1)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
        return dequantize(quantize(weight, scheme), weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def fake_quantize(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """The weight as the quantized model will see it, with the gradient passed straight through."""
    return _StraightThrough.apply(weight, scheme)
