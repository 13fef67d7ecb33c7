"""lmforge's own decode kernels (`kernels.c`, made PyTorch operators by `ops.cpp`): int8, int4,
w8a8, fp32 and bf16 matrix-vector products for a decode step's few input rows on an AVX2 CPU,
where PyTorch's weight-only kernels reach 1-7 % of the memory's bandwidth, fbgemm's dynamic linear
is bound by its arithmetic at one input row, and its fp32 and bf16 GEMVs read 9-10 GB/s
(`benchmarks/decode_kernels.py` times each against its PyTorch counterpart).

The operators live in the namespace `torch.ops.lmforge_native`; being C++, a compiled decode step
calls them without a trip through Python. The sources are compiled on first use with the
system's compilers (`cc` and `c++`, or $CC and $CXX) against the installed PyTorch's headers, in
about 25 seconds, into lmforge's cache (`$LMFORGE_CACHE`, else ~/.cache/lmforge; the temp
directory where that is not writable), once per source, compiler and PyTorch version. Where
there is no compiler or no AVX2, or the build fails (a warning says why), `kernels()` is None and
the layers use PyTorch's kernels: the same results up to fp32 rounding, slower.
`LMFORGE_NATIVE=0` turns them off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).parent
SOURCES = [HERE / "kernels.c", HERE / "kernels.h", HERE / "ops.cpp"]
C_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-fPIC"]
CXX_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-w",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
MAX_ROWS = 8  # input rows a call takes to these kernels (a decode step); more go to PyTorch's GEMMs
_loaded: list = []  # the operators, once loaded (a process loads their library once)


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


def _build(compilers: tuple[str, str], library: Path) -> str | None:
    """Compile the kernels into `library` (into a scratch file, then renamed: atomic); the error, if any."""
    c, cxx = compilers
    torch_dir = Path(torch.__file__).parent
    print(f"lmforge: building the decode kernels into {library.parent} (once, about 25 s)", file=sys.stderr, flush=True)
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            objects, built = Path(scratch) / "kernels.o", Path(scratch) / library.name
            for command in ([c, *C_FLAGS, "-c", str(HERE / "kernels.c"), "-o", str(objects)],
                            [cxx, *CXX_FLAGS, f"-I{torch_dir / 'include'}", f"-I{HERE}", str(HERE / "ops.cpp"),
                             str(objects), f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", "-o", str(built)]):
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
            os.replace(built, library)
    except subprocess.CalledProcessError as error:
        lines = [line for line in error.stderr.strip().splitlines() if "error" in line] or error.stderr.strip().splitlines()
        return (lines or [f"{error.cmd[0]} exited with {error.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None


@functools.cache
def kernels():
    """The operators (`torch.ops.lmforge_native`), or None where they cannot run here."""
    if os.environ.get("LMFORGE_NATIVE", "1") == "0" or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    c = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if c is None or cxx is None:
        return None
    key = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES)
                         + " ".join([c, cxx, *C_FLAGS, *CXX_FLAGS, torch.__version__]).encode()).hexdigest()[:16]
    error = None
    for directory in cache_directories():
        library = directory / f"kernels-{key}.so"
        if library.is_file() or (error := _build((c, cxx), library)) is None:
            break
    else:
        warnings.warn(f"lmforge's decode kernels did not build ({error}); PyTorch's kernels run instead", stacklevel=2)
        return None
    if not _loaded:
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError) as error:
            warnings.warn(f"lmforge's decode kernels did not load ({error}); PyTorch's kernels run instead", stacklevel=2)
            return None
        # Their output's shape, for graphs (`torch.compile`): the products of an [m, k] input.
        torch.library.register_fake("lmforge_native::linear",
                                    lambda x, number, out_features: x.new_empty(x.shape[0], out_features))
        torch.library.register_fake("lmforge_native::dense", lambda x, weight, bias: x.new_empty(x.shape[0], weight.shape[0]))
        _loaded.append(torch.ops.lmforge_native)
    return _loaded[0]


def make_kernel(scheme: str, codes, scales, zeros=None, row_sums=None, group_size: int = 0) -> int:
    """The number of a kernel made for these weights (`release` frees it): "int8" and "int4" take one
    layer's tensors as `QuantizedLinear` holds them; "w8a8" lists of `interleave`d codes, scales
    and row sums, one a layer, whose outputs come side by side."""
    ops = kernels()
    if scheme == "int8":
        return ops.make_int8(codes, scales)
    if scheme == "int4":
        return ops.make_int4(codes, scales, zeros, group_size)
    return ops.make_w8a8(list(codes), list(scales), list(row_sums))


def release(number: int) -> None:
    if _loaded:
        _loaded[0].release(number)
