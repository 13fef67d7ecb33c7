"""DPO throughput and memory: `lmforge align dpo` vs TRL's `DPOTrainer`, the trainer a user would
otherwise reach for, on the same model, pairs, batches, β, precision and optimizer.

    python benchmarks/align.py                       # a random ~27M-parameter Llama-style model
    python benchmarks/align.py --steps 6             # a quick check
    python benchmarks/align.py --method lora         # LoRA r 8, alpha 16 on q_proj, v_proj, both sides
    python benchmarks/align.py --trl-precompute      # TRL a second time, reference log-probs precomputed
    python benchmarks/align.py --checkpoint /tmp/sft --batch-size 2 --steps 10

lmforge runs the path `lmforge align dpo` takes (`dpo_job`, then `run_job`): the reference's
log-probabilities of every pair are computed once, before training, so one model is in memory and a
step is the policy's forward and backward alone. TRL runs on the checkpoint's `to_hf` export as a
user gets it by default: a second copy of the model as the reference, one reference forward a step
(with `--method lora`, the same model with its adapter switched off). `--trl-precompute` adds TRL
with `precompute_ref_log_probs=True`, which works the way lmforge does. The `prep s` column is the
time to build the job or the trainer: loading, tokenizing and, where it is done up front, the
reference pass.

The pairs are cut from the standard library's documentation: a prompt of `--prompt-tokens`, a
chosen response that continues it and a rejected one taken from elsewhere, each of 64 to
`--max-response-tokens` tokens. lmforge tokenizes them; TRL is given those very ids (its own text
preprocessing is skipped) in the order lmforge's shuffle reads them, so step k of either side trains
on the same batch. Both use β 0.1 with the sigmoid loss, summed response log-probabilities, fp32
weights under bf16 autocast where the CPU computes bf16 natively (else fp32), fused AdamW at
lmforge's betas, no weight decay, a constant learning rate, gradients clipped to norm 1.0 and no
activation checkpointing. At step 1 the policy is the reference, so both losses are ln 2 ≈ 0.6931.

Each run is a fresh process of this script (`--side`), so the peak RSS (`ru_maxrss`, read as the last
step ends) is that run's own. Pairs/s is the mean over the steps after `--warmup`; with `--rounds`,
each run is repeated round-robin and its median is shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from finetune import BETAS, SEED, random_checkpoint, trainable_parameters

BETA = 0.1
MIN_RESPONSE_TOKENS = 64


def summary(rates: list[float], losses: list[float], trainable: int, peak_mib: float, prep_s: float, warmup: int) -> dict:
    timed = rates[warmup:]
    return {"pairs_per_sec": sum(timed) / len(timed), "peak_mib": peak_mib, "prep_s": prep_s, "first_loss": losses[0],
            "final_loss": losses[-1], "trainable": trainable}


def train_config(args: argparse.Namespace):
    from lmforge.train.config import TrainConfig

    return TrainConfig(steps=args.steps, micro_batch_size=args.batch_size, context_length=args.context_length, lr=args.lr,
                       schedule="constant", warmup_steps=0, weight_decay=0.0, beta1=BETAS[0], beta2=BETAS[1], grad_clip=1.0,
                       precision=args.precision, seed=SEED, eval_every=0, save_every=args.steps, log_every=1,
                       sample_tokens=0, peak_flops=1e12, device="cpu")  # a given peak: no matmul measured at start


def lmforge_side(args: argparse.Namespace) -> dict:
    from lmforge.distributed.mesh import Topology
    from lmforge.peft import LoraConfig
    from lmforge.train.alignment import AlignOptions, dpo_job
    from lmforge.train.loop import run_job

    train = train_config(args)
    lora = LoraConfig(r=args.rank, alpha=args.alpha, targets=args.targets) if args.method == "lora" else None
    options = AlignOptions(method=args.method, peft_config=lora, beta=BETA, loss="sigmoid", val_fraction=0.0,
                           max_prompt_tokens=args.prompt_tokens)
    topology = Topology(device=torch.device("cpu"))
    start = time.perf_counter()
    job = dpo_job(args.checkpoint, [args.data], args.out, train, topology, options)
    prep_s = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainable_parameters(job.model))
    run_job(job, args.out, train, topology=topology)
    records = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "tokens_per_sec" in record]
    # A step's seconds are its tokens (2 rows a pair, padded) over its tokens/s.
    tokens = [after["tokens"] - before for before, after in zip([0] + [r["tokens"] for r in steps], steps)]
    rates = [args.batch_size * record["tokens_per_sec"] / count for record, count in zip(steps, tokens)]
    # memory_mb: ru_maxrss as the last step ended, before the final save
    return summary(rates, [r["loss"] for r in steps], trainable, steps[-1]["memory_mb"], prep_s, args.warmup)


def trl_side(args: argparse.Namespace) -> dict:
    import datasets
    import peft
    import transformers
    import trl

    from lmforge.data.examples.batches import EpochOrder
    from lmforge.data.examples.preferences import read_preferences, tokenize_pairs
    from lmforge.tokenizer import load_tokenizer

    class PreTokenizedDPOTrainer(trl.DPOTrainer):
        """TRL tokenizes text rows itself; these rows are lmforge's token ids already."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    class StepTimer(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.peak_mib = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    tokenizer = load_tokenizer(args.hf_dir / "tokenizer.json")
    examples, _ = read_preferences([args.data])
    pairs, _ = tokenize_pairs(examples, tokenizer, None, context_length=args.context_length,
                              max_prompt_tokens=args.prompt_tokens)
    order = EpochOrder(len(pairs), shuffle=True, seed=SEED, rank=0, world_size=1)  # lmforge's reading order
    rows = [pairs[index] for _ in range(args.steps) for index in order.take(args.batch_size)]
    dataset = datasets.Dataset.from_dict({"prompt_ids": [list(pair.prompt) for pair in rows],
                                          "chosen_ids": [list(pair.chosen) for pair in rows],
                                          "rejected_ids": [list(pair.rejected) for pair in rows]})
    processing_class = transformers.PreTrainedTokenizerFast(tokenizer_file=str(args.hf_dir / "tokenizer.json"))
    processing_class.pad_token = processing_class.eos_token = processing_class.convert_ids_to_tokens(tokenizer.eos_id)
    config = trl.DPOConfig(
        output_dir=str(args.out), beta=BETA, loss_type="sigmoid", per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], optim="adamw_torch_fused", max_grad_norm=1.0,
        bf16=args.precision == "bf16", gradient_checkpointing=False, max_length=None,
        precompute_ref_log_probs=args.side == "trl-precompute", train_sampling_strategy="sequential",
        use_cpu=True, seed=SEED, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
    )
    lora = None
    if args.method == "lora":
        lora = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                               target_modules="all-linear" if args.targets == "all-linear" else args.targets.split(","))
    timer = StepTimer()
    start = time.perf_counter()
    # Loaded from its directory: with no ref_model given, TRL loads the reference from the same path.
    model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32)
    trainer = PreTokenizedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processing_class,
                                     peft_config=lora, callbacks=[timer])
    prep_s = time.perf_counter() - start
    trainer.train()
    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    rates = [args.batch_size / seconds for seconds in timer.seconds]
    trainable = sum(p.numel() for p in trainable_parameters(trainer.model))
    return summary(rates, losses, trainable, timer.peak_mib, prep_s, args.warmup)


SIDES = {"lmforge": lmforge_side, "trl": trl_side, "trl-precompute": trl_side}


def write_pairs(path: Path, texts: list[str], tokenizer_path: Path, count: int, prompt_tokens: int,
                max_response_tokens: int) -> None:
    """`count` {prompt, chosen, rejected} rows cut from `texts` at token boundaries: the chosen
    response continues the prompt, the rejected one is a passage from elsewhere."""
    from lmforge.tokenizer import load_tokenizer

    text = "\n\n".join(texts)
    encoding = load_tokenizer(tokenizer_path).backend.encode(text, add_special_tokens=False)
    starts = [start for start, _ in encoding.offsets] + [len(text)]

    def cut(token: int, length: int) -> str:
        return text[starts[token]:starts[token + length]]

    draw = random.Random(SEED)
    span = prompt_tokens + max_response_tokens
    if len(starts) < 2 * span:
        raise SystemExit(f"the corpus has {len(starts) - 1:,} tokens, too few for pairs of {span} tokens")
    rows = []
    for index in range(count):
        prompt = index * span % (len(starts) - 1 - span)
        chosen_length, rejected_length = (draw.randint(MIN_RESPONSE_TOKENS, max_response_tokens) for _ in range(2))
        elsewhere = draw.randrange(len(starts) - 1 - span)
        rows.append({"prompt": cut(prompt, prompt_tokens), "chosen": cut(prompt + prompt_tokens, chosen_length),
                     "rejected": cut(elsewhere, rejected_length)})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_side(settings: dict, side: str, out: Path) -> dict:
    """One measured run in a fresh process of this script; its result is the last line it prints."""
    options = {**settings, "side": side, "out": out}
    command = [sys.executable, __file__] + [part for key, value in options.items()
                                            if value is not None and value is not False and key != "trl_precompute"
                                            for part in (f"--{key.replace('_', '-')}", str(value))]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="an lmforge checkpoint (default: a random ~27M Llama-style model)")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs a step (twice as many rows)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-response-tokens", type=int, default=128, help="responses have 64 to this many tokens")
    parser.add_argument("--pairs", type=int, help="pairs written (default: steps × batch size, each trained once; "
                        "lmforge reads them in a seeded shuffle and computes every one's reference log-probs first)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of pairs/s")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--rank", type=int, default=8, help="LoRA's r")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA's alpha")
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA's target layers, or all-linear")
    parser.add_argument("--trl-precompute", action="store_true",
                        help="also run TRL with precompute_ref_log_probs=True (one model in memory, as lmforge)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each side, round-robin; the median is shown")
    parser.add_argument("--threads", type=int, help="torch threads on every side (default: torch's)")
    for internal in ("--side", "--precision"):  # set by the top-level run for its subprocesses
        parser.add_argument(internal, help=argparse.SUPPRESS)
    parser.add_argument("--context-length", type=int, help=argparse.SUPPRESS)
    for internal in ("--hf-dir", "--data", "--out"):
        parser.add_argument(internal, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no step after --warmup {args.warmup} to time")
    if args.max_response_tokens < MIN_RESPONSE_TOKENS:
        parser.error(f"--max-response-tokens must be at least {MIN_RESPONSE_TOKENS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side:
        print(json.dumps(SIDES[args.side](args)))
        return

    import transformers
    import trl

    from lmforge.interop.hf import to_hf
    from lmforge.model.accounting import model_cost
    from lmforge.model.checkpoint_directory import read_config
    from lmforge.runtime import resolve_precision

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import stdlib_documents  # the tests' real English prose, shipped with Python

    precision = resolve_precision("auto", torch.device("cpu"))
    context_length = args.prompt_tokens + args.max_response_tokens
    sides = ["lmforge", "trl"] + (["trl-precompute"] if args.trl_precompute else [])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        texts = stdlib_documents()
        checkpoint = args.checkpoint or random_checkpoint(root / "model", texts, context_length)
        to_hf(checkpoint, root / "hf")
        write_pairs(root / "pairs.jsonl", texts, checkpoint / "tokenizer.json", args.pairs or args.steps * args.batch_size,
                    args.prompt_tokens, args.max_response_tokens)
        config = read_config(checkpoint)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
              f"{torch.get_num_threads()} threads (load average {load:.1f} at start)\n"
              f"{args.checkpoint or 'random Llama-style model'}: {model_cost(config).parameters / 1e6:.1f}M parameters, "
              f"{config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size:,}; precision {precision}; "
              f"{args.method}; {args.batch_size} pairs a step, prompts {args.prompt_tokens} tokens, responses "
              f"{MIN_RESPONSE_TOKENS}-{args.max_response_tokens}; {args.steps} steps ({args.warmup} untimed), "
              f"lr {args.lr:g}, beta {BETA}" + (f"; LoRA r {args.rank}, alpha {args.alpha:g}, targets {args.targets}"
                                                if args.method == "lora" else ""), flush=True)
        settings = {**vars(args), "checkpoint": checkpoint, "hf_dir": root / "hf", "data": root / "pairs.jsonl",
                    "precision": precision, "context_length": context_length}
        rounds = []
        for round_ in range(args.rounds):  # round-robin: a slow spell of a shared machine hits every run
            rounds.append({})
            for side in sides:
                figures = run_side(settings, side, root / f"{side}-{round_}")
                rounds[-1][side] = figures
                print(f"  round {round_ + 1}: {side}: {figures['pairs_per_sec']:,.2f} pairs/s, "
                      f"peak {figures['peak_mib']:,.0f} MiB, prep {figures['prep_s']:.1f} s", flush=True)
    # Each run at its median rate over the rounds, with that run's other figures.
    results = {side: sorted((runs[side] for runs in rounds), key=lambda run: run["pairs_per_sec"])[args.rounds // 2]
               for side in sides}

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; median of {args.rounds} round(s)\n")
    print(f"{'':<16}{'pairs/s':>9}{'lmforge ×':>11}{'peak MiB':>10}{'prep s':>8}{'trainable':>13}"
          f"{'step-1 loss':>13}{'final loss':>12}")
    ours = results["lmforge"]
    for side in sides:
        run = results[side]
        print(f"{side:<16}{run['pairs_per_sec']:>9,.2f}{ours['pairs_per_sec'] / run['pairs_per_sec']:>10.2f}×"
              f"{run['peak_mib']:>10,.0f}{run['prep_s']:>8.1f}{run['trainable']:>13,}{run['first_loss']:>13.4f}"
              f"{run['final_loss']:>12.4f}")
    agree = all(abs(results[side]["first_loss"] - math.log(2)) < 1e-3 for side in sides)
    print(f"\nstep-1 losses {'all' if agree else 'NOT all'} ln 2 = {math.log(2):.4f} (the policy is the reference at step 1)")


if __name__ == "__main__":
    main()
