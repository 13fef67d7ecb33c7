"""lmforge's own decode kernels (`kernels.c`): int8, int4 and w8a8 matrix-vector products for a
decode step's few input rows on an AVX2 CPU, where PyTorch's weight-only kernels reach 1-7 % of the
memory's bandwidth and fbgemm's dynamic linear is bound by its arithmetic at one input row
(`benchmarks/decode_kernels.py` times each against its PyTorch counterpart).

The C source is compiled on first use with the system's C compiler (`cc`, or $CC) into lmforge's
cache (`$LMFORGE_CACHE`, else ~/.cache/lmforge; the temp directory where that is not writable),
once per source and compiler. Where there is no compiler or no AVX2, or the build fails (a
warning says why), `kernels()` is None and the layers use PyTorch's kernels: the same results up
to fp32 rounding, slower. `LMFORGE_NATIVE=0` turns them off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC", "-shared"]
MAX_ROWS = 8  # input rows a call takes to these kernels (a decode step); more go to PyTorch's GEMMs


class Part(ctypes.Structure):
    _fields_ = [("codes", ctypes.c_void_p), ("rows", ctypes.c_int64), ("scales", ctypes.c_void_p),
                ("zeros", ctypes.c_void_p), ("row_sums", ctypes.c_void_p)]


def part(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
         row_sums: torch.Tensor | None = None) -> Part:
    """One weight matrix as the kernels read it. The tensors must stay alive and unmoved while
    the returned structure is used (its owner keeps them)."""
    def pointer(tensor):
        if tensor is None:
            return None
        assert tensor.is_contiguous() and tensor.device.type == "cpu"
        return tensor.data_ptr()
    return Part(pointer(codes), scales.shape[0], pointer(scales), pointer(zeros), pointer(row_sums))


def interleave(codes: torch.Tensor) -> torch.Tensor | None:
    """int8 codes [rows, k] in the w8a8 kernel's layout, [rows / 8][k / 4][8][4] (rows padded with
    zeros to a multiple of 8); None where k is not a multiple of 8."""
    rows, k = codes.shape
    if k % 8:
        return None
    padded = torch.cat((codes, codes.new_zeros(-rows % 8, k)))
    return padded.view(-1, 8, k // 4, 4).transpose(1, 2).contiguous()


def cache_directories() -> list[Path]:
    """Where the compiled kernels are kept: lmforge's cache, else (not writable) the temp directory."""
    cache = Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge")) / "kernels"
    return [cache, Path(tempfile.gettempdir()) / f"lmforge-kernels-{os.getuid()}"]


def _build(compiler: str, library: Path) -> str | None:
    """Compile the kernels into `library` (into a scratch file, then renamed: atomic); the error, if any."""
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            built = Path(scratch) / library.name
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], check=True, capture_output=True,
                           text=True, timeout=120)
            os.replace(built, library)
    except subprocess.CalledProcessError as error:
        return (error.stderr.strip().splitlines() or [f"{compiler} exited with {error.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot run here."""
    if os.environ.get("LMFORGE_NATIVE", "1") == "0" or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    error = None
    for directory in cache_directories():
        library = directory / f"kernels-{key}.so"
        if library.is_file() or (error := _build(compiler, library)) is None:
            break
    else:
        warnings.warn(f"lmforge's decode kernels did not build ({error}); PyTorch's kernels run instead", stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(library))
    except OSError:
        return None
    pointer, size, number = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.lmforge_w8a8.argtypes = [pointer, size, size, ctypes.POINTER(Part), number, size, pointer, pointer, number]
    lib.lmforge_int8.argtypes = [pointer, size, size, ctypes.POINTER(Part), pointer, number]
    lib.lmforge_int4.argtypes = [pointer, size, size, size, ctypes.POINTER(Part), pointer, pointer, number]
    lib.lmforge_float.argtypes = [pointer, size, size, pointer, pointer, size, number, pointer, pointer, number]
    for function in (lib.lmforge_w8a8, lib.lmforge_int8, lib.lmforge_int4, lib.lmforge_float):
        function.restype = None
    return lib


def int8_matmul(x: torch.Tensor, weight: Part) -> torch.Tensor:
    """x [m, k] (fp32, contiguous) @ the int8 weight's dequantized transpose: [m, rows]."""
    out = x.new_empty(x.shape[0], weight.rows)
    kernels().lmforge_int8(x.data_ptr(), x.shape[0], x.shape[1], ctypes.byref(weight), out.data_ptr(), torch.get_num_threads())
    return out


def int4_matmul(x: torch.Tensor, weight: Part, group_size: int) -> torch.Tensor:
    m, k = x.shape
    out = x.new_empty(m, weight.rows)
    scratch = x.new_empty(m * (k + k // group_size))
    kernels().lmforge_int4(x.data_ptr(), m, k, group_size, ctypes.byref(weight), out.data_ptr(), scratch.data_ptr(),
                           torch.get_num_threads())
    return out


def w8a8_matmul(x: torch.Tensor, weights, rows: int) -> torch.Tensor:
    """x [m, k] quantized with one scale and zero point (PyTorch's dynamic quantization's choice, on
    7 bits), times the int8 weights of `weights` (a ctypes array of `Part`s whose codes are
    `interleave`d) side by side: [m, rows], what fbgemm's dynamic linear computes."""
    m, k = x.shape
    out = x.new_empty(m, rows)
    scratch = torch.empty(m * k, dtype=torch.uint8)
    kernels().lmforge_w8a8(x.data_ptr(), m, k, weights, len(weights), rows, out.data_ptr(), scratch.data_ptr(),
                           torch.get_num_threads())
    return out


def float_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x [m, k], all fp32 or all bf16 on the CPU: the products
    summed in fp32 (bf16 outputs rounded to nearest even, as PyTorch rounds)."""
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    m, k = x.shape
    bf16 = x.dtype == torch.bfloat16
    out = x.new_empty(m, weight.shape[0])
    scratch = torch.empty(m * k if bf16 else 0)
    kernels().lmforge_float(x.data_ptr(), m, k, weight.data_ptr(), bias.data_ptr() if bias is not None else None,
                            weight.shape[0], bf16, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads())
    return out
