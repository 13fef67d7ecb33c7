"""Batch-1 greedy decode with the KV cache: lmforge in fp32, bf16 (where the CPU computes it
natively, or with --bf16), int8 and int4 weights, against Hugging Face transformers' `generate`
in fp32 (and bf16), on the same weights, in one process; with the bandwidth bound beside each.

    python benchmarks/decode.py                              # a random GPT-2-124M-shaped model
    python benchmarks/decode.py --checkpoint runs/gemma      # any checkpoint (gemma-3-270m from its GGUF)
    python benchmarks/decode.py --new-tokens 64 --rounds 3

Every variant decodes --new-tokens tokens after a 16-token prompt (EOS ignored), after a warm-up
run; the figure is the median of --rounds. The bound: a decode step reads every weight once, so
tokens/s can be no higher than the memory bandwidth (measured here by copying a 1 GiB tensor)
divided by the bytes of weights a token reads (the embedding row aside); the table shows each
figure as a share of its bound. llama.cpp is not timed here (it needs llama-cpp-python built from
its sdist, see benchmarks/gguf.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.infer.generate import generate_tokens
from lmforge.model.transformer import Transformer
from lmforge.quant.apply import quantize_model
from lmforge.quant.linear import QuantizedLinear
from lmforge.quant.schemes import QuantScheme
from lmforge.runtime import cpu_supports_bf16


def bandwidth_bytes_per_second() -> float:
    """Read + write bytes per second of a 1 GiB tensor copy (the best of three)."""
    source = torch.empty(1 << 28, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / best


def weight_bytes_per_token(model: Transformer) -> int:
    """Bytes of weights one decode step reads: every block and the output layer (one embedding row aside)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            total += sum(buffer.numel() * buffer.element_size() for buffer in module.buffers())
    seen = {id(tensor) for module in model.modules() if isinstance(module, QuantizedLinear) for tensor in module.buffers()}
    for name, parameter in model.named_parameters():
        if id(parameter) not in seen and not name.startswith("token_embedding"):
            total += parameter.numel() * parameter.element_size()
    if model.config.tie_embeddings:
        total += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return total


def timed(run, rounds: int) -> float:
    run()  # warm-up
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an lmforge checkpoint (default: a random GPT-2-124M-shaped model)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    args = parser.parse_args()

    from lmforge.interop.hf import to_hf
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.peft import load_finetuned

    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(directory) / "gpt2"
            save_checkpoint(Transformer(preset_config("gpt2")), checkpoint)
        to_hf(checkpoint, Path(directory) / "hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(Path(directory) / "hf", torch_dtype=torch.float32).eval()
        base = load_finetuned(checkpoint).eval()
    prompt = torch.randint(10, min(base.config.vocab_size, 30000), (16,)).tolist()
    bandwidth = bandwidth_bytes_per_second()
    bf16 = args.bf16 or cpu_supports_bf16()
    print(f"{checkpoint.name}: {base.config.n_layers} layers, d_model {base.config.d_model}, vocab {base.config.vocab_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {cpu_supports_bf16()}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {args.new_tokens} new tokens, median of {args.rounds}")

    def ours(model: Transformer):
        return lambda: len(list(generate_tokens(model, prompt, args.new_tokens)))

    def theirs(model):
        def run() -> int:
            with torch.no_grad():
                output = model.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
            return output.shape[1] - len(prompt)
        return run

    variants: list[tuple[str, Transformer]] = [("lmforge fp32", base)]
    if bf16:
        variants.append(("lmforge bf16", Transformer(base.config).to(torch.bfloat16).eval()))
        variants[-1][1].load_state_dict(base.state_dict())
    for scheme in (QuantScheme("int8"), QuantScheme("int4", args.group_size)):
        model = Transformer(base.config).eval()
        model.load_state_dict(base.state_dict())
        quantize_model(model, scheme)
        variants.append((f"lmforge {scheme.kind}", model))

    rows = []
    hf_rate = timed(theirs(hf), args.rounds)
    rows.append(("HF generate fp32", hf_rate, weight_bytes_per_token(base)))
    if bf16:
        rows.append(("HF generate bf16", timed(theirs(hf.to(torch.bfloat16)), args.rounds),
                     weight_bytes_per_token(variants[1][1])))
    for name, model in variants:
        rows.append((name, timed(ours(model), args.rounds), weight_bytes_per_token(model)))

    print(f"\n{'decoder':<20}{'tok/s':>9}{'vs HF fp32':>12}{'MB/token':>10}{'bound tok/s':>13}{'of bound':>10}")
    for name, rate, weight_bytes in rows:
        bound = bandwidth / weight_bytes
        print(f"{name:<20}{rate:>9.1f}{rate / hf_rate:>11.2f}×{weight_bytes / 1e6:>10.1f}{bound:>13.1f}{rate / bound:>9.0%}")


if __name__ == "__main__":
    main()
