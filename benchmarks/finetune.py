"""Supervised fine-tuning throughput and memory: `lmforge finetune` vs the stack a user would otherwise
write, a plain PyTorch loop over transformers' `AutoModelForCausalLM` (wrapped by
`peft.get_peft_model(LoraConfig(...))` for LoRA). LoRA is compared with LoRA, full fine-tuning with
full fine-tuning, on the same model, rows, batch shape, precision, LoRA targets and rank.

    python benchmarks/finetune.py                    # a random ~27M-parameter Llama-style model
    python benchmarks/finetune.py --steps 8          # a quick check
    python benchmarks/finetune.py --targets all-linear --rank 16
    python benchmarks/finetune.py --checkpoint /tmp/gemma --steps 10 --batch-size 2 --seq-len 256
    python benchmarks/finetune.py --sft-data alpaca_en_demo.json --examples 200 --rounds 3

lmforge runs the path `lmforge finetune` takes (`sft_job`, then `run_job`; packed rows) and its
tokens/s come from metrics.jsonl; transformers runs the checkpoint's `to_hf` export and computes the
model's own loss. Both train fp32 weights under bf16 autocast where the CPU computes bf16 natively
(else in fp32), with fused AdamW (the Trainer's default) at lmforge's betas, no weight decay, a
constant learning rate, gradients clipped to norm 1.0 and no activation checkpointing.

The data is `--batch-size` prompt/completion rows of the standard library's documentation, each at
least `--seq-len` + 1 tokens, so each step of either side trains on the very same rows (in another
order, which a mean loss does not see). With `--train-on completion` (default; what SFT does) the
prompt, a quarter of each row, is not trained: lmforge leaves those positions out of the output
layer, transformers is given -100 labels there (the usual way); `--train-on prompt+completion`
trains every token. The first step's losses should therefore agree to
rounding; the last step's show how far the trainings drift apart (LoRA's A starts from different
random draws on the two sides, B from zero on both).

With `--sft-data FILE` (Alpaca or prompt/completion rows, e.g. LLaMA-Factory's alpaca_en_demo.json)
both sides instead train one epoch of the file's first `--examples` rows that fit `--seq-len`, of
their own lengths, the same token ids on both sides: lmforge packs them (`--pack true`, its
default) into `--batch-size` rows of `--seq-len` a step; transformers takes `--batch-size` examples
a step, padded to the batch's longest (what `DataCollatorForSeq2Seq` does for a `Trainer`).
Tokens/s then counts the examples' tokens, not padding, so it is how fast each side gets through
the same data; the header says how much of each side's input is padding.

Each of the four runs is a fresh process of this script (`--side`), so the peak RSS (`ru_maxrss`,
read as the last step ends) is that run's own. Tokens/s is the mean over the steps after `--warmup`;
with `--rounds`, each run is repeated round-robin and its median is shown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BETAS = (0.9, 0.95)  # lmforge's TrainConfig defaults, given to both sides
SEED = 1337
METHODS = ("lora", "full")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def summary(rates: list[float], losses: list[float], trainable: int, peak_mib: float, warmup: int) -> dict:
    timed = rates[warmup:]
    return {"tokens_per_sec": sum(timed) / len(timed), "peak_mib": peak_mib, "first_loss": losses[0],
            "final_loss": losses[-1], "trainable": trainable}


def lmforge_side(args: argparse.Namespace) -> dict:
    from lmforge.distributed.mesh import Topology
    from lmforge.peft import LoraConfig
    from lmforge.train.config import TrainConfig
    from lmforge.train.finetuning import FinetuneOptions, sft_job
    from lmforge.train.loop import run_job

    train = TrainConfig(steps=args.steps, micro_batch_size=args.batch_size, context_length=args.seq_len, lr=args.lr,
                        schedule="constant", warmup_steps=0, weight_decay=0.0, beta1=BETAS[0], beta2=BETAS[1], grad_clip=1.0,
                        precision=args.precision, seed=SEED, eval_every=0, save_every=args.steps, log_every=1,
                        sample_tokens=0, peak_flops=1e12, device="cpu")  # a given peak: no matmul measured at start
    lora = LoraConfig(r=args.rank, alpha=args.alpha, targets=args.targets) if args.method == "lora" else None
    options = FinetuneOptions(method=args.method, peft_config=lora, train_on=args.train_on, pack=True, val_fraction=0.0)
    topology = Topology(device=torch.device("cpu"))
    job = sft_job(args.checkpoint, [args.data], args.out, train, topology, options)
    trainable = sum(p.numel() for p in trainable_parameters(job.model))
    if args.epoch:  # the warm-up steps, then as many as the packed rows of one epoch fill
        batches = -(-len(job.train_batches) // args.batch_size)
        train = dataclasses.replace(train, steps=args.warmup + batches, save_every=args.warmup + batches)
    run_job(job, args.out, train, topology=topology)
    records = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "tokens_per_sec" in record]
    if args.epoch:
        # A step's seconds: its window tokens (padding included) over its rate; one epoch is the
        # mean timed step times the epoch's share of a batch of rows, its tokens the examples' own.
        seconds = [(record["tokens"] - before) / record["tokens_per_sec"]
                   for record, before in zip(steps, [0] + [record["tokens"] for record in steps[:-1]])]
        timed = seconds[args.warmup:]
        epoch = sum(timed) / len(timed) * len(job.train_batches) / args.batch_size
        real = job.train_batches.tokens - job.train_batches.examples  # each example's ids less its first
        return {"tokens_per_sec": real / epoch, "peak_mib": steps[-1]["memory_mb"], "first_loss": steps[0]["loss"],
                "final_loss": steps[-1]["loss"], "trainable": trainable}
    # memory_mb: ru_maxrss as the last step ended, before the final save
    return summary([r["tokens_per_sec"] for r in steps], [r["loss"] for r in steps], trainable, steps[-1]["memory_mb"],
                   args.warmup)


def hf_side(args: argparse.Namespace) -> dict:
    import peft
    import tokenizers
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
    if args.method == "lora":
        torch.manual_seed(SEED)
        modules = "all-linear" if args.targets == "all-linear" else args.targets.split(",")
        model = peft.get_peft_model(model, peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                                                           target_modules=modules, task_type="CAUSAL_LM"))
    model.train()
    if args.epoch:
        return hf_epoch(args, model)
    tokenizer = tokenizers.Tokenizer.from_file(str(args.hf_dir / "tokenizer.json"))
    ids, prompt_lengths = [], []
    for line in args.data.read_text().splitlines():  # prompt and completion tokenized apart, as lmforge does
        row = json.loads(line)
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False).ids
        completion = tokenizer.encode(row["completion"], add_special_tokens=False).ids
        ids.append((prompt + completion)[: args.seq_len + 1])
        prompt_lengths.append(len(prompt) if args.train_on == "completion" else 0)
    if min(map(len, ids)) <= args.seq_len:
        raise SystemExit(f"{args.data}: a row has fewer than {args.seq_len + 1} tokens; make the rows longer")
    rows = torch.tensor(ids)
    inputs, targets = rows[:, :-1].contiguous(), rows[:, 1:].clone()
    for row, length in enumerate(prompt_lengths):  # target k is token k + 1: a prompt token is not trained
        targets[row, :max(0, length - 1)] = -100
    step, trainable = hf_trainer(args, model)
    rates, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        # shift_labels: the row's next tokens, all seq_len of them as in lmforge (labels alone drop the last)
        losses.append(step(input_ids=inputs, labels=inputs, shift_labels=targets))
        rates.append(inputs.numel() / (time.perf_counter() - start))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return summary(rates, losses, trainable, peak_mib, args.warmup)


def hf_trainer(args: argparse.Namespace, model: torch.nn.Module):
    """(one optimizer step on a batch, returning its loss; the trainable parameter count): fused
    AdamW, autocast as --precision says, gradients clipped to norm 1.0."""
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, betas=BETAS, weight_decay=0.0, fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(**batch: torch.Tensor) -> float:
        with autocast:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, sum(parameter.numel() for parameter in parameters)


def epoch_examples(args: argparse.Namespace) -> list:
    """`--sft-data`'s examples as `lmforge finetune` tokenizes them (prompt ids, completion ids, EOS)."""
    from lmforge.data.examples import read_examples, tokenize_examples
    from lmforge.tokenizer import load_tokenizer

    examples, _ = read_examples([args.data])
    return tokenize_examples(examples, load_tokenizer(args.checkpoint / "tokenizer.json"), None, train_on=args.train_on)


def hf_epoch(args: argparse.Namespace, model: torch.nn.Module) -> dict:
    """One epoch of the very examples lmforge trains on, `--batch-size` of them a step in a seeded
    shuffle, right-padded to the batch's longest with -100 labels on padding and on untrained
    tokens: what transformers' `DataCollatorForSeq2Seq` gives a `Trainer`. The first `--warmup`
    batches run once untimed before the epoch."""
    examples = epoch_examples(args)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(SEED)).tolist()
    batches = [[examples[index] for index in order[start:start + args.batch_size]]
               for start in range(0, len(order), args.batch_size)]
    step, trainable = hf_trainer(args, model)
    losses, seconds = [], 0.0
    for index, batch in enumerate(batches[:args.warmup] + batches):
        width = max(len(example.ids) for example in batch) - 1
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, example in enumerate(batch):
            count = len(example.ids) - 1
            inputs[row, :count] = torch.tensor(example.ids[:-1])
            mask[row, :count] = 1
            targets[row, :count] = torch.where(torch.tensor(example.supervised[1:]), torch.tensor(example.ids[1:]), -100)
        start = time.perf_counter()
        losses.append(step(input_ids=inputs, attention_mask=mask, labels=inputs, shift_labels=targets))
        if index >= args.warmup:
            seconds += time.perf_counter() - start
    real = sum(len(example.ids) - 1 for example in examples)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens_per_sec": real / seconds, "peak_mib": peak_mib, "first_loss": losses[0], "final_loss": losses[-1],
            "trainable": trainable}


def write_epoch_rows(source: Path, path: Path, checkpoint: Path, count: int, seq_len: int) -> tuple[int, int]:
    """The first `count` Alpaca or prompt/completion rows of `source` that fit `seq_len` + 1 tokens
    whole, as prompt/completion rows (Alpaca's own prompt format, no chat template: both sides then
    see the same ids); returns the rows written and their tokens."""
    from lmforge.data.examples import (
        CompletionExample,
        read_examples,
        tokenize_examples,
    )
    from lmforge.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(checkpoint / "tokenizer.json")
    rows, tokens = [], 0
    for line_number, record in enumerate(_records(source), 1):
        if "instruction" in record:
            task = record["instruction"] + (f"\n\n### Input:\n{record['input']}" if record.get("input") else "")
            record = {"prompt": f"### Instruction:\n{task}\n\n### Response:\n", "completion": record["output"]}
        example = CompletionExample(record["prompt"], record["completion"], f"{source}:{line_number}")
        length = len(tokenize_examples([example], tokenizer, None)[0].ids)
        if length <= seq_len + 1:
            rows.append(record)
            tokens += length
        if len(rows) == count:
            break
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    read_examples([path])  # every row is one lmforge reads
    return len(rows), tokens


def epoch_fill(rows: Path, checkpoint: Path, batch_size: int, seq_len: int) -> str:
    """How much of each side's input is the examples' tokens rather than padding, in one epoch."""
    from lmforge.data.examples import ExampleBatches

    examples = epoch_examples(argparse.Namespace(data=rows, checkpoint=checkpoint, train_on="completion"))
    real = sum(len(example.ids) - 1 for example in examples)
    packed = len(ExampleBatches(examples, context_length=seq_len, pack=True)) * seq_len
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(SEED)).tolist()
    padded = sum(len(batch) * (max(len(examples[index].ids) for index in batch) - 1)
                 for batch in (order[start:start + batch_size] for start in range(0, len(order), batch_size)))
    return f"{real / packed:.0%} of lmforge's packed rows, {real / padded:.0%} of transformers' padded batches"


def _records(source: Path) -> list[dict]:
    text = source.read_text(encoding="utf-8")
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]


SIDES = {"lmforge": lmforge_side, "hf": hf_side}


def random_checkpoint(directory: Path, texts: list[str], seq_len: int) -> Path:
    """A ~27M-parameter Llama-style model (untied output layer) with random weights and a BPE trained
    on `texts` (every pair merged, even one seen once: this corpus is too small for 8,192 tokens otherwise)."""
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=8192, min_frequency=1)
    tokenizer.save(directory)
    config = dataclasses.replace(preset_config("tiny-llama"), n_layers=6, d_model=512, n_heads=8, n_kv_heads=4,
                                 head_dim=None, d_ff=1536, vocab_size=tokenizer.vocab_size, tie_embeddings=False,
                                 context_length=max(256, seq_len), name="bench-llama")
    torch.manual_seed(0)
    save_checkpoint(Transformer(config), directory, tokenizer=directory / "tokenizer.json")
    return directory


def write_rows(path: Path, texts: list[str], count: int, seq_len: int) -> None:
    """`count` prompt/completion rows cut from `texts`: a prompt of about a quarter of a row, and a
    completion that fills the rest of it and more."""
    width = 8 * seq_len  # characters: English BPE gives about 4 a token, so about twice seq_len tokens
    text = "\n\n".join(texts)
    text *= -(-count * width // len(text))  # repeated when a large batch needs more than the corpus
    chunks = [text[start:start + width] for start in range(0, width * count, width)]
    rows = [{"prompt": chunk[: width // 8], "completion": chunk[width // 8:]} for chunk in chunks]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_side(settings: dict, side: str, method: str, out: Path) -> dict:
    """One measured run in a fresh process of this script; its result is the last line it prints."""
    options = {**settings, "side": side, "method": method, "out": out}
    command = [sys.executable, __file__] + [part for key, value in options.items() if value is not None
                                            for part in (f"--{key.replace('_', '-')}", str(value))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} {method} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an lmforge checkpoint (default: a random ~27M Llama-style model)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of tokens/s")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA's r")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA's alpha")
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA's target layers, or all-linear")
    parser.add_argument("--train-on", choices=("completion", "prompt+completion"), default="completion",
                        help="train the completions only (SFT), or every token")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each of the four, round-robin; the median is shown")
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's)")
    parser.add_argument("--sft-data", type=Path, help="an Alpaca or prompt/completion file (JSON or JSONL): train one "
                        "epoch of its examples, of their own lengths, instead of the equal-length rows")
    parser.add_argument("--examples", type=int, default=400, help="with --sft-data: its first examples that fit --seq-len")
    parser.add_argument("--epoch", type=int, default=0, help=argparse.SUPPRESS)
    for internal in ("--side", "--method", "--precision"):  # set by the top-level run for its subprocesses
        parser.add_argument(internal, help=argparse.SUPPRESS)
    for internal in ("--hf-dir", "--data", "--out"):
        parser.add_argument(internal, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no step after --warmup {args.warmup} to time")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(SIDES[args.side](args)))
        return

    import peft
    import transformers

    from lmforge.interop.hf import to_hf
    from lmforge.model.accounting import model_cost
    from lmforge.model.checkpoint_directory import read_config
    from lmforge.runtime import resolve_precision

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import (
        stdlib_documents,  # the tests' real English prose, shipped with Python
    )

    precision = resolve_precision("auto", torch.device("cpu"))
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        texts = stdlib_documents()
        checkpoint = args.checkpoint or random_checkpoint(root / "model", texts, args.seq_len)
        to_hf(checkpoint, root / "hf")
        config = read_config(checkpoint)
        if args.sft_data:
            count, tokens = write_epoch_rows(args.sft_data, root / "rows.jsonl", checkpoint, args.examples, args.seq_len)
            fill = epoch_fill(root / "rows.jsonl", checkpoint, args.batch_size, args.seq_len)
            data = (f"one epoch of {count:,} examples of {args.sft_data.name} ({tokens:,} tokens; {fill}), batch of "
                    f"{args.batch_size} (lmforge: packed rows of {args.seq_len}; transformers: examples padded to the longest)")
        else:
            write_rows(root / "rows.jsonl", texts, args.batch_size, args.seq_len)
            data = f"batch {args.batch_size} × {args.seq_len}, {args.steps} steps ({args.warmup} untimed)"
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
              f"{torch.get_num_threads()} threads (load average {load:.1f} at start)\n"
              f"{args.checkpoint or 'random Llama-style model'}: {model_cost(config).parameters / 1e6:.1f}M parameters, {config.n_layers} layers, "
              f"d_model {config.d_model}, vocab {config.vocab_size:,}; precision {precision}; {data}, lr {args.lr:g}, trained on {args.train_on}; "
              f"LoRA r {args.rank}, alpha {args.alpha:g}, targets {args.targets}", flush=True)
        settings = {**vars(args), "checkpoint": checkpoint, "hf_dir": root / "hf", "data": root / "rows.jsonl",
                    "precision": precision, "epoch": int(args.sft_data is not None), "sft_data": None}
        rounds = []
        for round_ in range(args.rounds):  # round-robin: a slow spell of a shared machine hits every run
            rounds.append({})
            for method in METHODS:
                for side in SIDES:
                    figures = run_side(settings, side, method, root / f"{side}-{method}-{round_}")
                    rounds[-1][side, method] = figures
                    print(f"  round {round_ + 1}: {side} {method}: {figures['tokens_per_sec']:,.0f} tokens/s, "
                          f"peak {figures['peak_mib']:,.0f} MiB", flush=True)
    # Each run at its median rate over the rounds, with that run's other figures.
    results = {key: sorted((runs[key] for runs in rounds), key=lambda run: run["tokens_per_sec"])[args.rounds // 2]
               for key in rounds[0]}

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; median of {args.rounds} round(s)")
    print(f"\n{'':<6}{'lmforge tok/s':>14}{'hf+peft tok/s':>15}{'ratio':>8}{'lmforge peak MiB':>18}{'hf peak MiB':>13}"
          f"{'trainable lmforge / hf':>28}{'step-1 loss lmforge / hf':>27}{'final loss lmforge / hf':>26}{'|Δ|':>8}")
    for method in METHODS:
        ours, theirs = results["lmforge", method], results["hf", method]
        print(f"{method:<6}{ours['tokens_per_sec']:>14,.0f}{theirs['tokens_per_sec']:>15,.0f}"
              f"{ours['tokens_per_sec'] / theirs['tokens_per_sec']:>7.2f}×{ours['peak_mib']:>18,.0f}{theirs['peak_mib']:>13,.0f}"
              f"{ours['trainable']:>16,} / {theirs['trainable']:<9,}{ours['first_loss']:>16.4f} / {theirs['first_loss']:<8.4f}"
              f"{ours['final_loss']:>15.4f} / {theirs['final_loss']:<8.4f}"
              f"{abs(ours['final_loss'] - theirs['final_loss']):>8.4f}")


if __name__ == "__main__":
    main()
