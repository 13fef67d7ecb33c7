"""A linear layer whose weight is stored as int8 or int4 codes. On the CPU a decode step's few
input rows go to lmforge's own kernels (`native.py`) where they are built, else to PyTorch's
integer kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, fbgemm's dynamic linear for
w8a8); more rows, and other devices, dequantize the weight and multiply (correct, and faster than
those kernels at many rows)."""

from __future__ import annotations

import itertools
import warnings
import weakref

import torch
from torch import nn

from lmforge.quant import native
from lmforge.quant.schemes import Quantized, QuantScheme, dequantize, pack_int4, quantize, unpack_int4


# fbgemm's packed weights are a TorchScript object, which cannot be an input of a
# `torch.compile`d graph. They live here under a number, and fbgemm's linear is an operator of
# lmforge's that takes that number: a compiled decode step (`Engine(compile=True)`) then runs
# every layer's integer matmul from one graph. lmforge's own kernels keep their weights under a
# number the same way, in C++ (`native.py`). Entries leave with their layer.
_PACKED: dict[int, object] = {}
_handles = itertools.count()
_library = torch.library.Library("lmforge", "DEF")
_library.define("int8_dynamic_linear(Tensor x, int handle, int out_features) -> Tensor")
_linear_dynamic = torch.ops.quantized.linear_dynamic.default
_library.impl("int8_dynamic_linear", lambda x, handle, out_features: _linear_dynamic(x, _PACKED[handle], True), "CPU")
torch.library.register_fake("lmforge::int8_dynamic_linear",
                            lambda x, handle, out_features: x.new_empty(x.shape[0], out_features), lib=_library)


WEIGHT_ONLY_KERNEL_ROWS = 8  # more input rows than this: dequantize and multiply (`_cpu_kernel`)


class QuantizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: QuantScheme,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        int8 = scheme.kind == "int8"
        groups = 1 if int8 else in_features // scheme.group_size
        # int8 codes as they are; int4 codes two a byte (`pack_int4`)
        self.register_buffer("codes", torch.zeros(out_features, in_features if int8 else in_features // 2,
                                                  dtype=torch.int8 if int8 else torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, *(() if int8 else (groups,)), device=device))
        self.register_buffer("zeros", None if int8 else torch.zeros(out_features, groups, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._packed = None  # the kernel's layout of codes, scales (and zeros), made once: int4, or int8 w8a8
        self._native = None  # the number of lmforge's kernel for these weights (`native_kernel`), or ()
        self.version = 0  # counts changes of the codes (`requantize_`) and moves, for copies made from them

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: QuantScheme) -> QuantizedLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, linear.weight.device)
        quantized = quantize(linear.weight, scheme)
        layer.codes.copy_(quantized.codes if scheme.kind == "int8" else pack_int4(quantized.codes))
        layer.scales.copy_(quantized.scales)
        if quantized.zeros is not None:
            layer.zeros.copy_(quantized.zeros)
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def quantized(self) -> Quantized:
        return Quantized(self.codes if self.scheme.kind == "int8" else unpack_int4(self.codes), self.scales, self.zeros)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.quantized(), dtype)

    def _apply(self, fn, recurse=True):  # a move or cast invalidates the packed copy
        self._forget_packed()
        return super()._apply(fn, recurse)

    def __getstate__(self):  # a copy packs its own weights (the number is this layer's)
        return {**self.__dict__, "_packed": None, "_native": None}

    def _load_from_state_dict(self, *args, **kwargs):  # new codes: the kernels' copies are stale
        super()._load_from_state_dict(*args, **kwargs)
        self._forget_packed()

    def _forget_packed(self) -> None:
        if isinstance(self._packed, int):
            _PACKED.pop(self._packed, None)
        if isinstance(self._native, int):
            native.release(self._native)
        self._packed = self._native = None
        self.version += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = None
        if flat.device.type == "cpu" and flat.dtype == torch.float32:
            out = _KernelMatmul.apply(flat, self) if flat.requires_grad else self._cpu_kernel(flat)
        if out is None:
            out = flat @ self.dequantized_weight(flat.dtype).t()
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def requantize_(self, weight: torch.Tensor) -> None:
        """Store `weight` (a full-precision [out, in] matrix) as this layer's codes, same scheme."""
        quantized = quantize(weight, self.scheme)
        self.codes.copy_(quantized.codes if self.scheme.kind == "int8" else pack_int4(quantized.codes))
        self.scales.copy_(quantized.scales)
        if quantized.zeros is not None:
            self.zeros.copy_(quantized.zeros)
        self._forget_packed()

    def prepare_native(self) -> None:
        """Make lmforge's kernel for these weights ready (a compiled step cannot make it)."""
        if self._native is None:
            self._native = _keep_native(self, native_kernel((self,))) if native.kernels() is not None else ()

    def _cpu_kernel(self, flat: torch.Tensor) -> torch.Tensor | None:
        """The integer kernel's product, or None where dequantizing is the faster way. PyTorch's
        weight-only kernels are GEMVs at heart: on an AVX2 CPU, 512 rows through a 640 → 2048
        layer take 660 ms (int8) and 2,250 ms (int4) against 26 and 50 ms for the dequantized
        weight and an fp32 matmul, which is compute-bound at that size anyway. Decode steps (a
        row or a few) keep a kernel: lmforge's own where it is built, else PyTorch's."""
        if self.scheme.activations != "int8" and flat.shape[0] > WEIGHT_ONLY_KERNEL_ROWS:
            return None
        if flat.shape[0] <= native.MAX_ROWS:
            if self._native is None and not torch.compiler.is_compiling():
                self.prepare_native()
            if isinstance(self._native, int):
                if self.scheme.activations == "int8":
                    return int8_dynamic_linear(flat, self._native, self.out_features, torch.ops.lmforge_native.linear)
                return torch.ops.lmforge_native.linear(flat, self._native, self.out_features)
        if self.scheme.activations == "int8":
            if self._packed is None:
                self._packed = _register(self, _fbgemm_weight(self.codes, self.scales))
            if isinstance(self._packed, int):  # reduce_range: 7-bit inputs (AVX2's pair sums cannot saturate)
                return int8_dynamic_linear(flat, self._packed, self.out_features)
        if self.scheme.kind == "int8":
            return torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scales)
        if self._packed is None:
            if self.out_features % 16 or self.in_features % 32:  # the kernel's tiles; such a layer dequantizes
                self._packed = ()
                return None
            self._packed = self.pytorch_int4_weights()
        if not self._packed:
            return None
        packed, scales_and_zeros = self._packed
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.scheme.group_size, scales_and_zeros)

    def pytorch_int4_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int4 codes, scales and zeros as `_weight_int4pack_mm_for_cpu` reads them."""
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.codes).to(torch.int32), 1)
        return packed, torch.stack((self.scales, self.zeros), dim=-1).transpose(0, 1).contiguous()

    def extra_repr(self) -> str:
        scheme = self.scheme.kind + (" (w8a8)" if self.scheme.activations == "int8" else "")
        groups = "" if self.scheme.kind == "int8" else f", group_size={self.scheme.group_size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"scheme={scheme}{groups}"


def native_kernel(layers: tuple[QuantizedLinear, ...]) -> int | tuple:
    """The number of lmforge's kernel (`native.py`) for the weights of `layers` side by side; ()
    where it has none for them. The kernel holds the tensors it reads; w8a8 reads a copy of the
    codes in its own layout (fbgemm's packing, for longer inputs, is another)."""
    scheme = layers[0].scheme
    if scheme.activations == "int8":
        codes = [native.interleave(layer.codes) for layer in layers]
        if any(interleaved is None for interleaved in codes):
            return ()
        return native.make_kernel("w8a8", codes, [layer.scales for layer in layers],
                                  row_sums=[layer.codes.sum(1, dtype=torch.int32) for layer in layers])
    (layer,) = layers
    if scheme.kind == "int8":
        return native.make_kernel("int8", layer.codes, layer.scales)
    if scheme.group_size % 32 or layer.in_features % 32:
        return ()
    return native.make_kernel("int4", layer.codes, layer.scales, layer.zeros, group_size=scheme.group_size)


def int8_dynamic_linear(flat: torch.Tensor, handle: int, out_features: int,
                        op=torch.ops.lmforge.int8_dynamic_linear) -> torch.Tensor:
    """fbgemm's dynamic int8 linear (or `op`, lmforge's kernel) takes one input scale a call. Rows
    whose ranges differ by orders of magnitude must not share one: gemma-3's first token carries
    activations ~100× the others', and one scale for a whole prompt rounds every other token's
    inputs to a few levels. So the rows are grouped by the power of two of their largest |value|,
    one call a group: within a factor of two of a scale a token. A decode step of one row (or a
    compiled one) is one call."""
    if flat.shape[0] == 1 or torch.compiler.is_compiling():
        return op(flat, handle, out_features)
    groups = input_row_groups(flat)
    if len(groups) == 1:
        return op(flat, handle, out_features)
    out = flat.new_empty(flat.shape[0], out_features)
    for rows in groups:
        out[rows] = op(flat[rows], handle, out_features)
    return out


def input_row_groups(flat: torch.Tensor) -> list[torch.Tensor]:
    """The indices of the rows of a [rows, in] input that share one input scale in a w8a8 call:
    those whose largest |value| has the same power of two."""
    exponents = torch.frexp(flat.abs().amax(dim=1)).exponent
    return [(exponents == exponent).nonzero().squeeze(1) for exponent in exponents.unique()]


class SharedInputLinears:
    """Several w8a8 layers that read the same input (attention's q, k and v; a gated MLP's gate and
    up) as one integer matmul over their codes side by side: one input quantization and one kernel
    call instead of several, the same numbers (the input's scale is the same for each). Set on
    the model by `fuse_shared_inputs`; it is not a module (nothing of it is saved). The model uses
    it only while its layers are still these, and it calls them one by one where one has a hook
    (LoRA adds its update to a layer's output so) or the input needs a gradient."""

    def __init__(self, layers: tuple[QuantizedLinear, ...]) -> None:
        self.layers = layers
        self.sizes = [layer.out_features for layer in layers]
        self._packed = self._native = self._versions = self._native_versions = None

    def __getstate__(self):  # a copy (of the model) packs its own
        return {**self.__dict__, "_packed": None, "_native": None, "_versions": None, "_native_versions": None}

    def prepare_native(self) -> None:
        """Make lmforge's kernel for the layers side by side ready (see `QuantizedLinear`)."""
        versions = [layer.version for layer in self.layers]
        if self._native is not None and versions == self._native_versions:
            return
        if isinstance(self._native, int):
            native.release(self._native)
        self._native_versions = versions
        self._native = _keep_native(self, native_kernel(self.layers)) if native.kernels() is not None else ()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = x.reshape(-1, self.layers[0].in_features)
        hooked = any(layer._forward_hooks or layer._forward_pre_hooks for layer in self.layers)  # LoRA adds to a layer's output
        if flat.device.type != "cpu" or flat.dtype != torch.float32 or flat.requires_grad or hooked:
            return tuple(layer(x) for layer in self.layers)
        if flat.shape[0] <= native.MAX_ROWS:
            if not torch.compiler.is_compiling():
                self.prepare_native()
            if isinstance(self._native, int):
                out = int8_dynamic_linear(flat, self._native, sum(self.sizes), torch.ops.lmforge_native.linear)
                return self._split(x, out)
        versions = [layer.version for layer in self.layers]
        if self._packed is None or versions != self._versions:
            if isinstance(self._packed, int):
                _PACKED.pop(self._packed, None)
            self._versions = versions
            codes = torch.cat([layer.codes for layer in self.layers])
            self._packed = _register(self, _fbgemm_weight(codes, torch.cat([layer.scales for layer in self.layers])))
        if not isinstance(self._packed, int):
            return tuple(layer(x) for layer in self.layers)
        return self._split(x, int8_dynamic_linear(flat, self._packed, sum(self.sizes)))

    def _split(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if any(layer.bias is not None for layer in self.layers):
            out = out + torch.cat([layer.bias if layer.bias is not None else out.new_zeros(layer.out_features)
                                   for layer in self.layers])
        return tuple(part.reshape(*x.shape[:-1], part.shape[-1]) for part in out.split(self.sizes, dim=-1))


def fuse_shared_inputs(model: nn.Module) -> int:
    """Give each attention (q, k, v) and gated MLP (gate, up) whose layers are all w8a8 on the CPU
    one `SharedInputLinears`; returns how many were fused."""
    fused = 0
    for module in model.modules():
        for attribute, names in (("fused_qkv", ("q_proj", "k_proj", "v_proj")), ("fused_gate_up", ("gate_proj", "up_proj"))):
            if not hasattr(module, attribute):
                continue
            layers = tuple(getattr(module, name) for name in names)
            if all(isinstance(layer, QuantizedLinear) and layer.scheme.activations == "int8"
                   and layer.codes.device.type == "cpu" for layer in layers):
                setattr(module, attribute, SharedInputLinears(layers))
                fused += 1
    return fused


class NativeLinear(nn.Linear):
    """An `nn.Linear` whose products of a few input rows without a gradient (a decode step), fp32
    or bf16 on the CPU, run lmforge's kernel (`lmforge_native.dense`): at one row on an AVX2 CPU
    1.6-4.1× PyTorch's fp32 GEMV and 1.7-3.0× its bf16 one, which converts where the CPU has no
    bf16 arithmetic (`benchmarks/decode_kernels.py`). The same parameters, state and hooks; any
    other input takes `nn.Linear`'s path. `use_native_linears` makes a model's layers these."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype in _NATIVE_FLOATS and x.dtype == self.weight.dtype and x.device.type == "cpu"
                and x.numel() <= native.MAX_ROWS * self.in_features
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            out = torch.ops.lmforge_native.dense(x.reshape(-1, self.in_features), self.weight, self.bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        return super().forward(x)


_NATIVE_FLOATS = (torch.float32, torch.bfloat16)


def use_native_linears(model: nn.Module) -> int:
    """Turn every CPU `nn.Linear` of `model` whose weight is a plain fp32 or bf16 tensor into a
    `NativeLinear` (the same object, its class changed: hooks, sharing and state stay), where
    lmforge's kernels are built; returns how many."""
    if native.kernels() is None:
        return 0
    changed = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is nn.Linear and type(weight.data) is torch.Tensor and weight.device.type == "cpu"
                and weight.dtype in _NATIVE_FLOATS):
            module.__class__ = NativeLinear
            changed += 1
    return changed


def prepare_decode_kernels(model: nn.Module) -> None:
    """Make every quantized layer's decode kernel ready: lmforge's (for each layer, and each group
    of w8a8 layers fused by `fuse_shared_inputs`), else PyTorch's packed weights, by one row run
    through it. A compiled decode step calls them but cannot make them without recompiling."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, QuantizedLinear) and module.codes.device.type == "cpu":
                module.prepare_native()
                if not isinstance(module._native, int):
                    module._cpu_kernel(module.scales.new_zeros(1, module.in_features))
            for attribute in ("fused_qkv", "fused_gate_up"):
                fused = getattr(module, attribute, None)
                if isinstance(fused, SharedInputLinears):
                    fused.prepare_native()
                    if not isinstance(fused._native, int):
                        fused(fused.layers[0].scales.new_zeros(1, fused.layers[0].in_features))


def _keep_native(owner, number):
    """`number` (lmforge's kernel, or () where there is none), its kernel released with `owner`."""
    if isinstance(number, int):
        weakref.finalize(owner, native.release, number)
    return number


def _register(owner, packed):
    """The number under which `packed` (fbgemm's weights) is found, kept while `owner` lives; or ()
    where there is none."""
    if isinstance(packed, tuple):
        return ()
    handle = next(_handles)
    _PACKED[handle] = packed
    weakref.finalize(owner, _PACKED.pop, handle, None)
    return handle


def _fbgemm_weight(codes: torch.Tensor, scales: torch.Tensor):
    """The int8 codes as a per-channel qint8 tensor packed for fbgemm's dynamic linear, or () where
    this PyTorch has no fbgemm (or no longer has its quantized tensors, which it marks deprecated):
    the layer then uses the weight-only kernel."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return ()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the deprecation notice, once a layer
            weight = torch._make_per_channel_quantized_tensor(codes, scales.double(),
                                                              torch.zeros_like(scales, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(weight, None)
    except (AttributeError, RuntimeError):
        return ()


class _KernelMatmul(torch.autograd.Function):
    """The integer kernel forward; backward to the input through the dequantized weight (the
    kernels have no derivative). The codes are frozen: LoRA on a quantized base (QLoRA) trains
    layers around them, and the gradient reaching earlier layers is that of the weight computed."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
        ctx.layer = layer
        out = layer._cpu_kernel(flat)
        return flat @ layer.dequantized_weight(flat.dtype).t() if out is None else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantized_weight(grad.dtype), None
