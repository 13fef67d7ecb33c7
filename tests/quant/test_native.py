"""lmforge's own decode kernels (`quant/native.py`, `kernels.c`): they build on an AVX2 CPU with a C
compiler, compute what PyTorch computes (the dequantized matmul for int8 and int4, fbgemm's
dynamic linear for w8a8, F.linear for fp32 and bf16 weights) on shapes with every kind of
remainder, and a model decoding with them gives PyTorch's logits and tokens."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.quant import native
from lmforge.quant.apply import quantize_model
from lmforge.quant.linear import NativeLinear, QuantizedLinear, _fbgemm_weight, _register, use_native_linears
from lmforge.quant.schemes import QuantScheme

CAN_BUILD = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and os.environ.get("LMFORGE_NATIVE") != "0"
             and bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")))
needs_kernels = pytest.mark.skipif(not CAN_BUILD, reason="lmforge's kernels need an AVX2 CPU and a C compiler")

# (output rows, inputs, input rows): rows not a multiple of 4 or 8, inputs with a remainder after
# the kernels' 8-, 16- and 32-wide steps, one input row to the most a call takes
SHAPES = [(1, 8, 1), (13, 40, 3), (48, 200, 8), (300, 1024, 1), (37, 96, 5)]


def product(scheme: str, x: torch.Tensor, rows: int, *weights, **options) -> torch.Tensor:
    """x times the weights through lmforge's kernel made for them (then released)."""
    number = native.make_kernel(scheme, *weights, **options)
    try:
        return torch.ops.lmforge_native.linear(x, number, rows)
    finally:
        native.release(number)


class DenseCalls(TorchDispatchMode):
    """The input rows of each call to lmforge's fp32 / bf16 kernel while it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.lmforge_native.dense.default:
            self.rows.append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


def test_kernels_build_on_an_avx2_cpu_with_a_compiler():
    if not CAN_BUILD:
        assert native.kernels() is None  # and the layers use PyTorch's kernels
        return
    assert native.kernels() is not None


@needs_kernels
@pytest.mark.parametrize("rows,k,m", SHAPES)
def test_int8_kernel_is_the_dequantized_matmul(rows, k, m):
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(k, rows), QuantScheme("int8"))
    x = torch.randn(m, k)
    out = product("int8", x, rows, layer.codes, layer.scales)
    torch.testing.assert_close(out, x @ layer.dequantized_weight().t(), atol=1e-5, rtol=1e-5)


INT4 = [QuantScheme("int4", 32), QuantScheme("int4", 64, symmetric=True), QuantScheme("int4", 128)]


@needs_kernels
@pytest.mark.parametrize("rows,k,m,scheme", [(*shape, scheme) for shape in SHAPES for scheme in INT4 if shape[1] % scheme.group_size == 0],
                         ids=lambda value: f"g{value.group_size}" if isinstance(value, QuantScheme) else str(value))
def test_int4_kernel_is_the_dequantized_matmul(rows, k, m, scheme):
    torch.manual_seed(rows)
    layer = QuantizedLinear.from_linear(nn.Linear(k, rows), scheme)
    x = torch.randn(m, k)
    out = product("int4", x, rows, layer.codes, layer.scales, layer.zeros, group_size=scheme.group_size)
    torch.testing.assert_close(out, x @ layer.dequantized_weight().t(), atol=1e-5, rtol=1e-5)


INPUTS = {"normal": lambda x: x * 3, "tiny": lambda x: x * 1e-7, "positive": torch.abs, "negative": lambda x: -x.abs(),
          "zeros": torch.zeros_like}


@needs_kernels
@pytest.mark.parametrize("rows,k,m", [shape for shape in SHAPES if shape[1] % 8 == 0])
@pytest.mark.parametrize("inputs", INPUTS)
def test_w8a8_kernel_is_fbgemms_dynamic_linear(rows, k, m, inputs):
    """The same input scale, zero point and codes as fbgemm's (inputs of a range too small for
    the smallest scale, of one sign, or all zero included): equal to fp32 rounding, and equal to
    an exact integer product of the input quantized as PyTorch's fake quantization rounds it."""
    torch.manual_seed(0)
    layer = QuantizedLinear.from_linear(nn.Linear(k, rows), QuantScheme("int8", activations="int8"))
    x = INPUTS[inputs](torch.randn(m, k))
    sums = layer.codes.sum(1, dtype=torch.int32)
    out = product("w8a8", x, rows, [native.interleave(layer.codes)], [layer.scales], row_sums=[sums])
    holder = nn.Module()
    fbgemm = torch.ops.lmforge.int8_dynamic_linear(x, _register(holder, _fbgemm_weight(layer.codes, layer.scales)), rows)
    torch.testing.assert_close(out, fbgemm, atol=1e-6 * float(fbgemm.abs().max()), rtol=1e-6)
    scale, zero_point = torch._choose_qparams_per_tensor(x, True)
    inputs = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255) / scale + zero_point
    exact = ((inputs.round().double() - zero_point) @ layer.codes.double().t()) * (scale * layer.scales.double())
    torch.testing.assert_close(out.double(), exact, atol=1e-5 * float(exact.abs().max()), rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("scheme", [QuantScheme("int8"), QuantScheme("int4", 32), QuantScheme("int8", activations="int8")],
                         ids=["int8", "int4", "w8a8"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_a_model_decodes_with_lmforges_kernels_as_with_pytorchs(name, scheme, monkeypatch):
    """A decode step's rows (five here) go to lmforge's kernels (fused q/k/v and gate/up for w8a8),
    and give the logits of PyTorch's kernels; w8a8's greedy tokens are the same."""
    from lmforge.infer.generate import generate_tokens

    torch.manual_seed(0)
    model = Transformer(preset_config(name)).eval()
    pytorchs = Transformer(model.config).eval()
    pytorchs.load_state_dict(model.state_dict())
    quantize_model(model, scheme, output=True)
    quantize_model(pytorchs, scheme, output=True)
    tokens = torch.randint(0, 200, (1, 5))
    with torch.no_grad():
        ours = model(tokens)
    if scheme.activations == "int8":  # q/k/v and gate/up run side by side, the other layers alone
        assert isinstance(model.blocks[0].attention.fused_qkv._native, int) and isinstance(model.lm_head._native, int)
    else:
        assert all(isinstance(module._native, int) for module in model.modules() if isinstance(module, QuantizedLinear))
    monkeypatch.setattr(native, "kernels", lambda: None)
    with torch.no_grad():
        theirs = pytorchs(tokens)
    assert not any(isinstance(module._native, int) for module in pytorchs.modules() if isinstance(module, QuantizedLinear))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    if scheme.activations == "int8":
        monkeypatch.undo()
        prompt = tokens[0].tolist()
        ours = list(generate_tokens(model, prompt, 12))
        monkeypatch.setattr(native, "kernels", lambda: None)
        assert ours == list(generate_tokens(pytorchs, prompt, 12))


@needs_kernels
def test_new_codes_reach_the_kernels_copy():
    """w8a8's kernel reads its own copy of the codes: loading other weights, or `requantize_`,
    replaces it."""
    torch.manual_seed(0)
    scheme = QuantScheme("int8", activations="int8")
    layer, other = (QuantizedLinear.from_linear(nn.Linear(64, 24), scheme) for _ in range(2))
    x = torch.randn(1, 64)
    with torch.no_grad():
        before = layer(x)
        assert isinstance(layer._native, int)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), atol=0, rtol=0)
        weight = torch.randn(24, 64)
        layer.requantize_(weight)
        other.requantize_(weight)
        torch.testing.assert_close(layer(x), other(x), atol=0, rtol=0)
    assert not torch.equal(before, layer(x))


@pytest.fixture
def fresh_build(monkeypatch):
    """`kernels()` decides again (its answer is cached), and again after the test."""
    native.kernels.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    native.kernels.cache_clear()


def test_a_failed_build_warns_and_leaves_pytorchs_kernels(fresh_build, tmp_path):
    fresh_build.setenv("LMFORGE_CACHE", str(tmp_path))
    fresh_build.setenv("CC", shutil.which("false") or "/bin/false")  # a compiler that fails
    fresh_build.setattr(native, "cache_directories", lambda: [tmp_path / "kernels"])
    if not CAN_BUILD:
        assert native.kernels() is None
        return
    with pytest.warns(UserWarning, match="lmforge's decode kernels did not build"):
        assert native.kernels() is None
    layer = QuantizedLinear.from_linear(nn.Linear(64, 16), QuantScheme("int8"))
    x = torch.randn(1, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantized_weight().t() + layer.bias, atol=1e-5, rtol=1e-5)
    assert layer._native == ()  # PyTorch's kernel ran
    assert not list(tmp_path.rglob("*.so"))


@needs_kernels
def test_an_unwritable_cache_builds_in_the_temp_directory(fresh_build, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache's directory should be
    fresh_build.setenv("LMFORGE_CACHE", str(blocked))
    fresh_build.setattr("tempfile.tempdir", str(tmp_path))
    assert native.kernels() is not None
    assert [path.parent.name for path in tmp_path.rglob("kernels-*.so")] == [f"lmforge-kernels-{os.getuid()}"]


# ---- full-precision weights (fp32, bf16): `lmforge_native.dense` and `NativeLinear` ----

FLOAT_SHAPES = SHAPES + [(20, 45, 2)]  # 45 inputs: a remainder after the 16-wide step


@needs_kernels
@pytest.mark.parametrize("rows,k,m", FLOAT_SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_float_kernel_is_f_linear_in_fp32(rows, k, m, bias):
    torch.manual_seed(rows)
    x, weight = torch.randn(m, k), torch.randn(rows, k)
    b = torch.randn(rows) if bias else None
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
    torch.testing.assert_close(torch.ops.lmforge_native.dense(x, weight, b), exact.float(), atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("rows,k,m", FLOAT_SHAPES)
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_bf16_kernel_rounds_the_fp32_sum_as_pytorch_does(rows, k, m, bias):
    """bf16 in, bf16 out: the exact product rounded to bf16, but for sums that fp32 puts on the
    other side of a rounding boundary (one bf16 step at most)."""
    torch.manual_seed(rows)
    x, weight = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(rows, k, dtype=torch.bfloat16)
    b = torch.randn(rows, dtype=torch.bfloat16) if bias else None
    out = torch.ops.lmforge_native.dense(x, weight, b)
    assert out.dtype == torch.bfloat16 and out.shape == (m, rows)
    exact = F.linear(x.double(), weight.double(), None if b is None else b.double())
    rounded = exact.to(torch.bfloat16)
    assert (out == rounded).float().mean() > 0.95
    torch.testing.assert_close(out.double(), exact, atol=1e-6, rtol=2 ** -7)  # one step of bf16's 8-bit mantissa


@needs_kernels
def test_bf16_kernel_rounds_ties_to_even_and_keeps_nan():
    """1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7 (to 1, the even one); 1 + 2^-7 + 2^-8
    halfway between 1 + 2^-7 and 1 + 2^-6 (to 1 + 2^-6); NaN becomes PyTorch's bf16 NaN."""
    x = torch.tensor([[1.0], [float("nan")]], dtype=torch.bfloat16)
    weight = torch.tensor([[1.0], [1 + 2 ** -7]], dtype=torch.bfloat16)
    bias = torch.tensor([2 ** -8, 2 ** -8], dtype=torch.bfloat16)
    out = torch.ops.lmforge_native.dense(x, weight, bias)
    assert out[0].tolist() == [1.0, 1 + 2 ** -6]
    expected_nan = torch.tensor(float("nan")).to(torch.bfloat16).view(torch.int16)
    assert (out[1].view(torch.int16) == expected_nan).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])  # gpt2: biases, and the output layer tied
def test_native_linears_run_decode_rows_through_the_kernel_and_keep_the_model(name, dtype):
    """`use_native_linears` changes each linear layer's class only: the state, the tied output
    layer and a hook stay; a few rows without a gradient go to the kernel (the logits of
    PyTorch's GEMMs within the dtype's rounding); more rows, or a gradient, take nn.Linear's path."""
    torch.manual_seed(0)
    model = Transformer(preset_config(name)).to(dtype).eval()
    plain = Transformer(model.config).to(dtype).eval()
    plain.load_state_dict(model.state_dict())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    hooked = []
    model.blocks[0].ffn.down_proj.register_forward_hook(lambda module, args, out: hooked.append(out.shape))
    linears = sum(type(module) is nn.Linear for module in model.modules())
    assert use_native_linears(model) == linears > 0
    assert not any(type(module) is nn.Linear for module in model.modules())
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    if model.config.tie_embeddings:
        assert model.lm_head.weight is model.token_embedding.weight

    tokens = torch.randint(0, 200, (1, 5))
    with torch.no_grad(), DenseCalls() as calls:
        ours = model(tokens)
    theirs = plain(tokens)
    assert calls.rows == [5] * linears and hooked == [(1, 5, model.config.d_model)]
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)

    long = torch.randint(0, 200, (1, native.MAX_ROWS + 1))
    with torch.no_grad(), DenseCalls() as calls:
        model(long)
    assert not calls.rows  # more rows than a decode step: PyTorch's GEMM
    if dtype == torch.float32:  # training: nn.Linear's forward and its gradients
        model.train(), plain.train()
        with DenseCalls() as calls:
            model(tokens).float().sum().backward()
        plain(tokens).float().sum().backward()
        assert not calls.rows
        torch.testing.assert_close(model.lm_head.weight.grad, plain.lm_head.weight.grad)


@needs_kernels
def test_a_model_quantized_after_decoding_quantizes_its_native_linears():
    from lmforge.infer.generate import generate_tokens

    torch.manual_seed(0)
    model = Transformer(preset_config("tiny-llama")).eval()
    list(generate_tokens(model, [1, 2, 3], 2))
    assert isinstance(model.blocks[0].attention.q_proj, NativeLinear)
    plain = Transformer(model.config).eval()
    plain.load_state_dict(model.state_dict())
    assert quantize_model(model, QuantScheme("int8")) == quantize_model(plain, QuantScheme("int8")) > 0


@needs_kernels
def test_a_kernel_leaves_with_its_layer_and_bad_calls_are_refused():
    """A layer's kernel is released when the layer goes; calling a released one, with the wrong
    output size or with tensors of other dtypes is a clear error, not a crash."""
    import gc

    layer = QuantizedLinear.from_linear(nn.Linear(64, 16), QuantScheme("int8"))
    layer.prepare_native()
    number, x = layer._native, torch.randn(1, 64)
    torch.testing.assert_close(torch.ops.lmforge_native.linear(x, number, 16), layer(x) - layer.bias)
    with pytest.raises(RuntimeError, match="16 outputs"):
        torch.ops.lmforge_native.linear(x, number, 17)
    with pytest.raises(RuntimeError, match="contiguous CPU tensor of Float"):
        torch.ops.lmforge_native.linear(x.double(), number, 16)
    with pytest.raises(RuntimeError, match="contiguous CPU tensor of BFloat16"):
        torch.ops.lmforge_native.dense(x, torch.randn(4, 64, dtype=torch.bfloat16), None)
    del layer
    gc.collect()
    with pytest.raises(RuntimeError, match=f"no kernel {number}"):
        torch.ops.lmforge_native.linear(x, number, 16)
