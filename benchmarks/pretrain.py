"""Training throughput: `lmforge pretrain`'s loop vs Hugging Face transformers' GPT-2 and litgpt's
GPT, each trained by a plain PyTorch loop — same config, same data and batches, same optimizer
settings, same precision.

    python benchmarks/pretrain.py                     # a GPT-2-style model sized for a CPU
    python benchmarks/pretrain.py --steps 30 --layers 12 --d-model 768 --heads 12
    python benchmarks/pretrain.py --tokenizer gpt2.tiktoken      # GPT-2's 50,257-token vocabulary
    .venv-litgpt/bin/python benchmarks/pretrain.py    # with litgpt's row (README: how to make that venv)

The data is a prepared directory built here from real text (the Python standard library's
documentation). The trainers run in turn, `--rounds` times round-robin (so a slow spell of a
shared machine hits them all), and each row is the median over rounds of tokens/s after two
warm-up steps. MFU is against the same measured matmul peak for every row. lmforge runs eager
and with `--train.compile true` (compile time excluded: it happens in the warm-up steps).

litgpt's GPT has no learned position table (rotary on 0 dimensions here, so none at all) and an
untied output layer; otherwise its config matches: pre-LayerNorm, tanh-GELU MLP, biases, SDPA.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from lmforge.data.loader import TokenWindows
from lmforge.model.accounting import model_cost
from lmforge.model.loss import cross_entropy
from lmforge.model.presets import preset_config
from lmforge.runtime import DTYPES, resolve_device, resolve_precision
from lmforge.train.config import TrainConfig
from lmforge.train.loop import run_training
from lmforge.train.mfu import measure_peak_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_prepared_data  # noqa: E402  (the tests' small real-text corpus)


def plain_loop(model: torch.nn.Module, forward, loss_fn, data: Path, train: TrainConfig) -> float:
    """Tokens/s of `model` under the loop a user would write: AdamW, autocast, clipping.
    `forward` maps input ids to logits, `loss_fn` logits and targets to the loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(train.beta1, train.beta2),
                                  weight_decay=train.weight_decay, foreach=True)
    windows = TokenWindows(data, "train", context_length=train.context_length, shuffle=True, seed=train.seed)
    autocast = torch.autocast("cpu", dtype=DTYPES[train.precision], enabled=train.precision != "fp32")
    start = None
    for step in range(train.steps):
        if step == 2:  # the first steps warm up allocators and kernels
            start = time.perf_counter()
        inputs, targets = windows.next_batch(train.micro_batch_size)
        with autocast:
            loss = loss_fn(forward(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (train.steps - 2) * train.micro_batch_size * train.context_length / (time.perf_counter() - start)


def hf_gpt2_loop(config, data: Path, train: TrainConfig) -> float:
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_embd=config.d_model, n_layer=config.n_layers, n_head=config.n_heads,
        n_positions=config.context_length, n_inner=config.d_ff, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(train.seed)
    model = transformers.GPT2LMHeadModel(hf_config)
    return plain_loop(model, lambda inputs: model(inputs).logits, cross_entropy, data, train)


def litgpt_loop(config, data: Path, train: TrainConfig) -> float:
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy  # litgpt's own pretraining loss

    lit_config = Config(
        name="bench-gpt2", block_size=config.context_length, vocab_size=config.vocab_size, padded_vocab_size=config.vocab_size,
        n_layer=config.n_layers, n_head=config.n_heads, n_embd=config.d_model, n_query_groups=config.n_heads,
        rotary_percentage=0.0, parallel_residual=False, bias=True, norm_class_name="LayerNorm",
        mlp_class_name="GptNeoxMLP", intermediate_size=config.d_ff, gelu_approximate="tanh",  # GPT-2's GELU
    )
    torch.manual_seed(train.seed)
    model = GPT(lit_config)
    return plain_loop(model, model, chunked_cross_entropy, data, train)


def lmforge_loop(config, data: Path, train: TrainConfig, out: Path) -> float:
    run_training(config, data, out, train)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r][2:]  # same warm-up as above
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per run, the first 2 of them warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every trainer, round-robin; the median is reported")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary to train on the corpus (it may stop short)")
    parser.add_argument("--tokenizer", type=Path, help="tokenize with this file instead (tokenizer.json, vocab.json, *.tiktoken)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    device = resolve_device("cpu")
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as directory:
        data = build_prepared_data(Path(directory) / "data", vocab_size=args.vocab, tokenizer_path=args.tokenizer)
        vocab = json.loads((data / "manifest.json").read_text())["vocab_size"]
        config = dataclasses.replace(
            preset_config("tiny-gpt2"), n_layers=args.layers, d_model=args.d_model, n_heads=args.heads,
            n_kv_heads=args.heads, head_dim=None, d_ff=4 * args.d_model, vocab_size=vocab, context_length=args.context, name="bench-gpt2",
        )
        peak = measure_peak_flops(device, DTYPES[precision], seconds=3.0)  # the best of many: a shared machine dips
        train = TrainConfig(steps=args.steps, micro_batch_size=args.batch, context_length=args.context, warmup_steps=2,
                            precision=precision, eval_every=0, eval_batches=1, sample_tokens=0, log_every=1,
                            save_every=10**9, peak_flops=peak, device="cpu")
        flops = model_cost(config, context_length=args.context).flops_per_token
        print(f"GPT-2-style model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {vocab}, "
              f"batch {args.batch} × {args.context}; precision {precision}; {torch.get_num_threads()} threads; "
              f"measured peak {peak / 1e9:.1f} GFLOP/s; {args.rounds} rounds of {args.steps} steps")
        runs = Path(directory) / "runs"
        trainers = {
            "lmforge pretrain": lambda r: lmforge_loop(config, data, train, runs / f"eager-{r}"),
            "lmforge pretrain, compiled": lambda r: lmforge_loop(config, data, dataclasses.replace(train, compile=True),
                                                                 runs / f"compiled-{r}"),
            "HF GPT2LMHeadModel + plain loop": lambda r: hf_gpt2_loop(config, data, train),
        }
        if importlib.util.find_spec("litgpt") is not None:
            trainers["litgpt GPT + plain loop"] = lambda r: litgpt_loop(config, data, train)
        else:
            print("litgpt is not importable (README: the venv for its row): its row is left out")
        rates = {name: [] for name in trainers}
        for round_ in range(args.rounds):
            for name, run in trainers.items():
                rates[name].append(run(round_))
                print(f"  round {round_ + 1}: {name}: {rates[name][-1]:,.0f} tokens/s", flush=True)

    medians = {name: statistics.median(values) for name, values in rates.items()}
    ours = medians["lmforge pretrain"]
    print(f"\n{'trainer':<34}{'tokens/s':>10}{'MFU':>8}{'lmforge ×':>11}")
    for name, rate in medians.items():
        print(f"{name:<34}{rate:>10,.0f}{rate * flops / peak:>8.1%}{ours / rate:>10.2f}×")


if __name__ == "__main__":
    main()
