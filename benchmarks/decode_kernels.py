"""One decode step's matrix-vector products, layer by layer: lmforge's kernels (`quant/kernels.c`)
against the PyTorch kernels a user would otherwise run (`F.linear` for fp32 and bf16 weights,
`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, fbgemm's dynamic linear for w8a8), on the
same weights, in one process. Each row prints milliseconds a call, the weight bytes read per second, and the ratio.

    python benchmarks/decode_kernels.py                   # gemma-3-270m's shapes (its 262,144-row output layer included)
    python benchmarks/decode_kernels.py --shapes 768x2304,768x768,768x3072,3072x768,768x50257 --rows 1,4

A shape is inputs x outputs. The weights are random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.quant import native
from lmforge.quant.linear import QuantizedLinear, _fbgemm_weight
from lmforge.quant.schemes import QuantScheme

GEMMA = "640x1536,1024x640,640x4096,2048x640,640x262144"  # q/k/v side by side, o, gate/up, down, output


def per_call(run, seconds: float = 1.0) -> float:
    """Median seconds a call over batches of calls lasting about `seconds` in all."""
    run()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 10:
        run()
        calls += 1
    batch = max(calls, 1)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        for _ in range(batch):
            run()
        times.append((time.perf_counter() - start) / batch)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=GEMMA, help="comma-separated INxOUT layer shapes (default: gemma-3-270m's)")
    parser.add_argument("--rows", default="1", help="comma-separated input row counts (a decode step's batch), at most 8")
    args = parser.parse_args()
    if native.kernels() is None:
        raise SystemExit("lmforge's kernels are not built here (they need an AVX2 CPU and a C compiler)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"\n{'scheme':<7}{'shape':>12}{'rows':>6}{'lmforge ms':>12}{'GB/s':>7}{'PyTorch ms':>12}{'GB/s':>7}{'ratio':>8}")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        k, n = (int(size) for size in shape.split("x"))
        linear = nn.Linear(k, n, bias=False)
        for scheme in (torch.float32, torch.bfloat16, QuantScheme("int8"), QuantScheme("int4", 32),
                       QuantScheme("int8", activations="int8")):
            if isinstance(scheme, torch.dtype):  # a full-precision layer
                weight_bytes, name = linear.weight.numel() * scheme.itemsize, "fp32" if scheme == torch.float32 else "bf16"
                weight = linear.weight.detach().to(scheme)
                ours = lambda x, weight=weight: torch.ops.lmforge_native.dense(x.to(weight.dtype), weight, None)
                theirs = lambda x, weight=weight: F.linear(x.to(weight.dtype), weight)
                compare(name, shape, args.rows, weight_bytes, ours, theirs)
                continue
            layer = QuantizedLinear.from_linear(linear, scheme)
            name = "w8a8" if scheme.activations == "int8" else scheme.kind
            if scheme.activations == "int8":
                fbgemm = _fbgemm_weight(layer.codes, layer.scales)
                number = native.make_kernel("w8a8", [native.interleave(layer.codes)], [layer.scales],
                                            row_sums=[layer.codes.sum(1, dtype=torch.int32)])
                theirs = lambda x: torch.ops.quantized.linear_dynamic(x, fbgemm, True)
            elif scheme.kind == "int8":
                number = native.make_kernel("int8", layer.codes, layer.scales)
                theirs = lambda x: torch.ops.aten._weight_int8pack_mm(x, layer.codes, layer.scales)
            else:
                number = native.make_kernel("int4", layer.codes, layer.scales, layer.zeros, group_size=32)
                packed, scales_and_zeros = layer.pytorch_int4_weights()
                theirs = lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, scales_and_zeros)
            ours = lambda x: torch.ops.lmforge_native.linear(x, number, n)
            weight_bytes = sum(buffer.numel() * buffer.element_size() for buffer in layer.buffers())
            compare(name, shape, args.rows, weight_bytes, ours, theirs)
            native.release(number)


def compare(name: str, shape: str, row_counts: str, weight_bytes: int, ours, theirs) -> None:
    """Check that lmforge's kernel computes what PyTorch's does, then time both; one line a row count."""
    k = int(shape.split("x")[0])
    for rows in (int(count) for count in row_counts.split(",")):
        x = torch.randn(rows, k)
        expected = theirs(x).float()
        tolerance = 1e-2 if name == "bf16" else 1e-3  # bf16: one rounding of the output apart
        torch.testing.assert_close(ours(x).float(), expected, atol=tolerance * float(expected.abs().max()), rtol=tolerance)
        mine, reference = per_call(lambda: ours(x)), per_call(lambda: theirs(x))
        print(f"{name:<7}{shape:>12}{rows:>6}{mine * 1e3:>12.3f}{weight_bytes / mine / 1e9:>7.1f}"
              f"{reference * 1e3:>12.3f}{weight_bytes / reference / 1e9:>7.1f}{reference / mine:>7.2f}×")


if __name__ == "__main__":
    main()
