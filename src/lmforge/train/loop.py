"""The one training loop: pretraining here, fine-tuning later (only the data and the trainable
parameters differ). Resumption is exact: model, optimizer, schedule, RNG and data position."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.data.loader import TokenWindows
from lmforge.data.shards import read_manifest
from lmforge.errors import LmforgeError, warn
from lmforge.infer.generate import generate_tokens
from lmforge.model.accounting import model_cost
from lmforge.model.checkpoint import model_state, save_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer, cross_entropy
from lmforge.runtime import DTYPES, resolve_device, resolve_precision
from lmforge.train.checkpoint import load_latest_train_state, restore_rng, save_train_state
from lmforge.train.config import TrainConfig
from lmforge.train.metrics import MetricsLog, truncate_metrics
from lmforge.train.mfu import measure_peak_flops
from lmforge.train.optimizer import build_optimizer
from lmforge.train.schedule import learning_rate


@dataclass
class RunResult:
    step: int
    val_loss: float | None
    out: Path


class _StopRequest:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint after the current step and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prepare_model_config(config: ModelConfig, manifest: dict, context_length: int) -> ModelConfig:
    """Fit the model's vocabulary to the data's tokenizer, and check the context fits."""
    if config.vocab_size != manifest["vocab_size"]:
        config = dataclasses.replace(config, vocab_size=manifest["vocab_size"])
    if context_length > config.context_length:
        raise LmforgeError(
            f"--train.context_length {context_length} exceeds the model's context_length {config.context_length}"
        )
    return config


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: TokenWindows, batches: int, batch_size: int,
             device: torch.device, precision: str) -> float:
    """Mean next-token loss over the first `batches` micro-batches of the validation split."""
    model.eval()
    windows.load_state_dict({**windows.state_dict(), "epoch": 0, "position": 0})
    total, count = 0.0, 0
    for _ in range(min(batches, max(1, len(windows) // batch_size))):
        inputs, targets = windows.next_batch(batch_size)
        with _autocast(device, precision):
            logits = model(inputs.to(device))
        total += cross_entropy(logits, targets.to(device)).item()
        count += 1
    model.train()
    return total / count


def _samples(model: Transformer, tokenizer, prompts: list[str], tokens: int, seed: int) -> list[str]:
    model.eval()
    texts = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)[: model.config.context_length - 1] or [tokenizer.eos_id or 0]
        stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        new = list(generate_tokens(model, ids, tokens, temperature=0.8, top_k=50, stop_ids=stops, seed=seed))
        texts.append(prompt + tokenizer.decode(new))
    model.train()
    return texts


def run_training(model_config: ModelConfig, data: Path, out: Path, train: TrainConfig, resume: bool = False) -> RunResult:
    from lmforge.tokenizer import load_tokenizer

    device = resolve_device(train.device)
    train = dataclasses.replace(train, precision=resolve_precision(train.precision, device))
    if train.precision == "fp16" and device.type != "cuda":
        raise LmforgeError("--train.precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on CPU")
    manifest = read_manifest(data)
    context_length = train.context_length or model_config.context_length
    model_config = prepare_model_config(model_config, manifest, context_length)
    train_windows = TokenWindows(data, "train", context_length=context_length, shuffle=True, seed=train.seed)
    has_val = "val" in manifest["splits"] and manifest["splits"]["val"]["tokens"] > context_length
    val_windows = TokenWindows(data, "val", context_length=context_length, shuffle=False) if has_val else None
    tokenizer = load_tokenizer(data / "tokenizer.json")

    out.mkdir(parents=True, exist_ok=True)
    train_dir = out / "train"
    resumed = load_latest_train_state(train_dir) if resume else None
    if not resume and (train_dir.exists() and any(train_dir.iterdir())):
        raise LmforgeError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    if resume and resumed is None:
        print(f"nothing to resume in {out}; starting from step 0", file=sys.stderr)

    torch.manual_seed(train.seed)
    model = Transformer(model_config).to(device)
    model.checkpoint_every = {"none": 0, "full": 1, "selective": 2}[train.activation_checkpointing]
    optimizer = build_optimizer(model, train)
    start_step, bad_steps, tokens_seen = 0, 0, 0
    if resumed is not None:
        if resumed.state["model_config"] != model_config.to_dict():
            raise LmforgeError(f"{resumed.path}: saved with a different model config than this command's --model")
        model.load_state_dict(resumed.model, strict=False)
        optimizer.load_state_dict(resumed.optimizer)
        train_windows.load_state_dict(resumed.state["data"])
        restore_rng(resumed.rng)
        start_step, bad_steps, tokens_seen = resumed.step, resumed.state["bad_steps"], resumed.state["tokens"]
        truncate_metrics(out / "metrics.jsonl", start_step)
        print(f"resumed from {resumed.path} at step {start_step}", file=sys.stderr)
    elif not resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)

    step_model = torch.compile(model) if train.compile else model
    scaler = torch.amp.GradScaler("cuda") if train.precision == "fp16" else None
    tokens_per_step = train.micro_batch_size * train.grad_accum * context_length
    flops_per_token = model_cost(model_config, context_length=context_length).flops_per_token
    peak_flops = train.peak_flops or measure_peak_flops(device, DTYPES[train.precision] if train.precision != "fp32" else torch.float32)
    metrics = MetricsLog(out)
    prompts = list(train.sample_prompts)
    if not prompts and val_windows is not None:  # the opening of a validation window
        prompts = [tokenizer.decode(val_windows.next_batch(1)[0][0, :8].tolist())]
    stop = _StopRequest()
    val_loss = None

    def save(step: int) -> None:
        state = {"data": train_windows.state_dict(), "bad_steps": bad_steps, "tokens": tokens_seen,
                 "model_config": model_config.to_dict(), "train_config": dataclasses.asdict(train)}
        save_train_state(train_dir, step, model_state(model), optimizer.state_dict(), state, train.keep_last)
        save_checkpoint(model, out, tokenizer=data / "tokenizer.json",
                        generation={"stop_token_ids": [tokenizer.eos_id] if tokenizer.eos_id is not None else []})

    def run_eval(step: int) -> None:
        nonlocal val_loss
        if val_windows is None:
            return
        val_loss = evaluate(step_model, val_windows, train.eval_batches, train.micro_batch_size, device, train.precision)
        record = {"step": step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))}
        if train.sample_tokens and prompts:
            record["samples"] = _samples(model, tokenizer, prompts, train.sample_tokens, train.seed)
            for text in record["samples"]:
                tqdm.write(f"  sample @ {step}: {text!r}")
        metrics.write(record)
        tqdm.write(f"step {step}: val_loss {val_loss:.4f}, perplexity {record['val_perplexity']:.2f}")

    step = start_step
    window_losses, window_start, window_tokens = [], time.perf_counter(), 0
    progress = tqdm(total=train.steps, initial=start_step, desc="pretrain", unit="step", dynamic_ncols=True)
    with stop.installed():
        if start_step == 0:
            run_eval(0)
        while step < train.steps:
            lr = learning_rate(step, train)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for _ in range(train.grad_accum):
                inputs, targets = train_windows.next_batch(train.micro_batch_size)
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                with _autocast(device, train.precision):
                    logits = step_model(inputs)
                    loss = cross_entropy(logits, targets) + model.moe_aux_loss()
                scaled = loss / train.grad_accum
                (scaler.scale(scaled) if scaler else scaled).backward()
                step_loss += loss.item() / train.grad_accum
            step += 1
            tokens_seen += tokens_per_step
            if not math.isfinite(step_loss):
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                warn(f"step {step}: loss is {step_loss}; skipping this update ({bad_steps}/{train.max_bad_steps})")
                if bad_steps > train.max_bad_steps:
                    raise LmforgeError(
                        f"loss was NaN/inf on {bad_steps} steps; stopped at step {step}. Lower --train.lr or use "
                        "--train.precision fp32; the last good checkpoint is in " + str(train_dir))
                progress.update(1)
                continue
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or float("inf")).item()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            window_losses.append(step_loss)
            window_tokens += tokens_per_step
            progress.update(1)
            if step % train.log_every == 0 or step == train.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_tokens / elapsed
                record = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_sec": tokens_per_sec, "mfu": tokens_per_sec * flops_per_token / peak_flops,
                          "tokens": tokens_seen, "memory_mb": _memory_mb(device)}
                metrics.write(record)
                progress.set_postfix(loss=f"{sum(window_losses) / len(window_losses):.3f}", lr=f"{lr:.2e}",
                                     tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{record['mfu']:.1%}")
                window_losses, window_start, window_tokens = [], time.perf_counter(), 0
            if train.eval_every and step % train.eval_every == 0 and step != train.steps:
                run_eval(step)
            if (train.save_every and step % train.save_every == 0) or step == train.steps or stop.signal:
                save(step)
            if stop.signal:
                progress.close()
                name = signal.Signals(stop.signal).name
                print(f"\n{name}: saved a checkpoint at step {step}; continue with --resume", file=sys.stderr)
                raise SystemExit(128 + stop.signal)
        if start_step < train.steps or val_loss is None:
            run_eval(step)
    progress.close()
    metrics.close()
    return RunResult(step=step, val_loss=val_loss, out=out)
