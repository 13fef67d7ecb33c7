"""lmforge's Transformer vs Hugging Face transformers' GPT2LMHeadModel, same weights, same work.

    python benchmarks/model.py                  # a GPT-2-style model sized for a CPU
    python benchmarks/model.py --layers 12 --d-model 768 --heads 12   # GPT-2 124M

Measures forward+backward training tokens/s (fp32, and bf16 autocast where the CPU computes bf16
natively — AMX / AVX512-BF16; elsewhere bf16 is emulated and pointless to time, `--bf16` forces it)
and greedy decode tokens/s with the KV cache (lmforge `generate_tokens` vs HF `generate`), after a
warm-up, in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import transformers

from lmforge.infer.generate import generate_tokens
from lmforge.interop.hf import from_hf
from lmforge.model.checkpoint_directory import load_checkpoint
from lmforge.runtime import cpu_supports_bf16


def train_tokens_per_second(step, tokens_per_step: int, steps: int) -> float:
    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return tokens_per_step * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    args = parser.parse_args()
    precisions = [("fp32", torch.float32)]
    if args.bf16 or cpu_supports_bf16():
        precisions.append(("bf16 autocast", torch.bfloat16))
    torch.manual_seed(0)

    hf_config = transformers.GPT2Config(
        vocab_size=args.vocab, n_embd=args.d_model, n_layer=args.layers, n_head=args.heads, n_positions=1024,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
    )
    hf = transformers.GPT2LMHeadModel(hf_config)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(Path(directory) / "hf")
        from_hf(Path(directory) / "hf", Path(directory) / "ours")
        ours = load_checkpoint(Path(directory) / "ours")
    print(f"GPT-2-style model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {args.vocab}; "
          f"batch {args.batch} × {args.context} tokens; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"native bf16: {cpu_supports_bf16()}")

    tokens = torch.randint(0, args.vocab, (args.batch, args.context + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def ours_step(dtype):
        def step():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = ours(inputs, targets=targets)  # output layer and loss fused, as in training
            loss.backward()
            ours.zero_grad(set_to_none=True)
        return step

    def hf_step(dtype):
        def step():
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = hf(inputs, labels=tokens[:, :-1]).loss  # HF shifts labels inside: same targets
            loss.backward()
            hf.zero_grad(set_to_none=True)
        return step

    ours.train(), hf.train()
    rows = []
    for name, dtype in precisions:
        ours_rate = train_tokens_per_second(ours_step(dtype), inputs.numel(), args.steps)
        hf_rate = train_tokens_per_second(hf_step(dtype), inputs.numel(), args.steps)
        rows.append((f"train fwd+bwd {name}", ours_rate, hf_rate))

    ours.eval(), hf.eval()
    prompt = tokens[0, :32].tolist()
    for name, dtype in precisions:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            list(generate_tokens(ours, prompt, 8))
            start = time.perf_counter()
            generated = list(generate_tokens(ours, prompt, args.new_tokens))
            ours_rate = len(generated) / (time.perf_counter() - start)
            with torch.no_grad():
                hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
                start = time.perf_counter()
                output = hf.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     do_sample=False, pad_token_id=0, eos_token_id=None)
                hf_rate = (output.shape[1] - len(prompt)) / (time.perf_counter() - start)
        rows.append((f"decode (KV cache) {name}", ours_rate, hf_rate))
        if dtype == torch.float32:
            assert generated == output[0, len(prompt):].tolist(), "greedy tokens differ"

    print(f"\n{'work':<30}{'lmforge tok/s':>15}{'HF tok/s':>12}{'ratio':>9}")
    for name, ours_rate, hf_rate in rows:
        print(f"{name:<30}{ours_rate:>15,.0f}{hf_rate:>12,.0f}{ours_rate / hf_rate:>8.2f}×")


if __name__ == "__main__":
    main()
