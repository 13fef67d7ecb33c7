"""The one training loop, for pretraining and fine-tuning alike: what differs is the job
(`lmforge.train.job.TrainingJob`: the model and its trainable parameters, the objective, the
batches). Resumption is exact: model, optimizer, schedule, RNG and data position.

The same loop runs on one device or on many processes under torchrun: `lmforge.distributed` lays
the model out, `lmforge.train.step` runs each micro-batch on it, data-parallel ranks read disjoint shares of every global
batch, losses and norms are reduced over ranks, and rank 0 alone prints and writes files."""

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

from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError, warn
from lmforge.infer.generate import generate_tokens
from lmforge.model.accounting import model_cost
from lmforge.model.checkpoint import model_state, save_checkpoint
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.runtime import DTYPES, resolve_device, resolve_precision
from lmforge.tokenizer import load_tokenizer
from lmforge.train.checkpoint import (
    TrainState,
    list_checkpoints,
    load_latest_train_state,
    optimizer_state_by_name,
    restore_train_state,
    save_sharded_train_state,
    save_train_state,
)
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.job import Batches, TrainingJob
from lmforge.train.metrics import MetricsLog, truncate_metrics
from lmforge.train.mfu import measure_peak_flops
from lmforge.train.optimizer import build_optimizer
from lmforge.train.pretraining import pretraining_job
from lmforge.train.schedule import learning_rate
from lmforge.train.step import TrainStep


# printed beside the validation loss when a job's `validate` or its objective gives them
VALIDATION_FIGURES = ("val_accuracy", "val_macro_f1", "val_margin", "val_rewards/accuracies", "val_rewards/margins")


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


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def evaluate(engine: TrainStep, batches: Batches, micro_batches: int, batch_size: int) -> tuple[float, dict[str, float]]:
    """Mean loss per item (supervised token, example, pair) over the first `micro_batches`
    micro-batches of the validation split (all of it when it is smaller; the last batch may be
    short), over every data-parallel rank's share; and the objective's figures, means per item."""
    batches.load_state_dict({**batches.state_dict(), "epoch": 0, "position": 0})
    getattr(engine.objective, "take_figures", dict)()  # drop what training left
    total, count = 0.0, 0
    rows = max(1, min(micro_batches * batch_size, len(batches) // engine.topology.dp_degree))
    for start in range(0, rows, batch_size):
        batch = batches.next_batch(min(batch_size, rows - start))
        total += engine.eval_loss(batch)
        count += engine.objective.count(batch)
    total, count = engine.topology.mean(total, present=engine.layout.last_stage), engine.topology.mean(count)
    figures = objective_figures(engine.objective, engine.topology, count * engine.topology.dp_degree)
    return total / max(count, 1), figures


def objective_figures(objective, topology: Topology, count: float) -> dict[str, float]:
    """The figures an objective summed since they were last taken (DPO's rewards, a reward model's
    accuracy), over every data-parallel rank, as means over `count` items — or over their own
    count where the objective gives (sum, count); {} for objectives that keep none."""
    take = getattr(objective, "take_figures", None)
    if take is None:
        return {}
    figures = {}
    for name, value in sorted(take().items()):
        total, items = value if isinstance(value, tuple) else (value, None)
        total = topology.mean(total) * topology.dp_degree
        items = count if items is None else topology.mean(items) * topology.dp_degree
        figures[name] = total / max(items, 1)
    return figures


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


def _report_layout_change(resumed: TrainState, topology: Topology, train: TrainConfig) -> None:
    """Say what differs when a run continues on another layout: the weights are redistributed, and
    the global batch follows the new data-parallel degree."""
    if not topology.is_main:
        return
    layout, saved = topology.layout(), resumed.state.get("layout", dict.fromkeys(topology.layout(), 1))
    changes = [f"{dim} {saved.get(dim, 1)} → {degree}" for dim, degree in layout.items() if saved.get(dim, 1) != degree]
    saved_train = resumed.state.get("train_config", {})
    before = saved_train.get("micro_batch_size", 0) * saved_train.get("grad_accum", 0) * saved["dp_replicate"] * saved["dp_shard"]
    after = train.micro_batch_size * train.grad_accum * topology.dp_degree
    if before and before != after:
        changes.append(f"global batch {before} → {after} sequences")
    if changes:
        warn(f"{resumed.path} was saved with another layout ({', '.join(changes)}); its weights are redistributed")


def check_run_directory(out: Path, resume: bool) -> None:
    """A new run must not start over an earlier one (its checkpoints would mix)."""
    train_dir = out / "train"
    if not resume and train_dir.is_dir() and any(train_dir.iterdir()):
        raise LmforgeError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")


def run_training(model_config: ModelConfig, data: Path, out: Path, train: TrainConfig, resume: bool = False, *,
                 parallel: ParallelConfig | None = None, topology: Topology | None = None, verify: str = "sample") -> RunResult:
    """Pretrain `model_config` on `data` into `out`; under torchrun, `topology` places this process.
    The shards are checked first as `verify` says (sample, full, off: see `lmforge.data.verify`)."""
    parallel = parallel or ParallelConfig()
    topology = topology or Topology(device=resolve_device(train.device))
    job = pretraining_job(model_config, data, train, parallel, topology, verify)
    return run_job(job, out, train, resume, parallel=parallel, topology=topology)


def run_job(job: TrainingJob, out: Path, train: TrainConfig, resume: bool = False, *,
            parallel: ParallelConfig | None = None, topology: Topology | None = None) -> RunResult:
    """Train `job` into the checkpoint directory `out`, resuming the run there with `resume`."""
    parallel = parallel or ParallelConfig()
    topology = topology or Topology(device=resolve_device(train.device))
    device, main = topology.device, topology.is_main
    train = dataclasses.replace(train, precision=resolve_precision(train.precision, device))
    if train.precision == "fp16" and device.type != "cuda":
        raise LmforgeError("--train.precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on CPU")
    model, model_config, context_length = job.model, job.config, job.context_length
    train_batches, val_batches = job.train_batches, job.val_batches

    check_run_directory(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    train_dir = out / "train"
    resumed = load_latest_train_state(train_dir) if resume else None
    if resume and resumed is None and main:
        print(f"nothing to resume in {out}; starting from step 0", file=sys.stderr)
    if resumed is not None:
        identity = json.loads(json.dumps(job.identity))  # as state.json holds it: tuples are lists
        differing = next((key for key, value in identity.items() if resumed.state.get(key) != value), None)
        if differing == "model_config":
            raise LmforgeError(f"{resumed.path}: saved with a different model config than this command's --model")
        if differing is not None:
            raise LmforgeError(f"{resumed.path}: saved with a different {differing.replace('_', ' ')} than this command's")

    optimizer_by_name = None
    if resumed is not None and not resumed.sharded and topology.distributed:
        optimizer_by_name = optimizer_state_by_name(model, build_optimizer(model, train), resumed.optimizer)
    engine = TrainStep(model, topology, job.objective, train, parallel)
    optimizer = build_optimizer(engine.layout.model, train)
    start_step, bad_steps, tokens_seen = 0, 0, 0
    if resumed is not None:
        _report_layout_change(resumed, topology, train)
        restore_train_state(resumed, engine.layout.model, optimizer, topology, optimizer_by_name)
        train_batches.load_state_dict(resumed.state["data"])
        start_step, bad_steps, tokens_seen = resumed.step, resumed.state["bad_steps"], resumed.state["tokens"]
        if main:
            truncate_metrics(out / "metrics.jsonl", start_step)
            print(f"resumed from {resumed.path} at step {start_step}", file=sys.stderr)
    elif not resume and main:
        (out / "metrics.jsonl").unlink(missing_ok=True)

    flops_per_token = job.flops_per_token or model_cost(model_config, context_length=context_length).flops_per_token
    peak_flops = train.peak_flops or measure_peak_flops(device, DTYPES[train.precision])
    metrics = MetricsLog(out, enabled=main)
    prompts = job.sample_prompts if engine.layout.whole else []
    if train.sample_tokens and not engine.layout.whole and main:
        warn("no samples during training: the model is sharded; run `lmforge generate` on the checkpoint in " + str(out))
    stop = _StopRequest()
    val_loss = None

    def save(step: int) -> None:
        state = {"data": train_batches.state_dict(), "bad_steps": bad_steps, "tokens": tokens_seen,
                 **job.identity, "train_config": dataclasses.asdict(train)}
        exported = model
        if topology.distributed:
            state["layout"] = topology.layout()
            path = save_sharded_train_state(train_dir, step, engine.layout.model, optimizer, state, train.keep_last, topology)
            if main and not engine.layout.whole:  # rank 0 alone reads the whole model back from the shards
                from lmforge.distributed.checkpoint import load_consolidated

                exported = load_consolidated(path, model_config, job.rebuild)
        else:
            weights = model_state(model)
            if job.frozen_base:  # the rest is the starting checkpoint's, rebuilt on resume
                weights = {name: tensor for name, tensor in weights.items() if name in trainable}
            save_train_state(train_dir, step, weights, optimizer.state_dict(), state, train.keep_last)
        if main:
            if job.save_model is not None:
                job.save_model(exported, out, step == train.steps)
            else:
                save_checkpoint(exported, out, tokenizer=job.tokenizer, generation=job.generation)
        topology.barrier()

    def run_eval(step: int) -> None:
        nonlocal val_loss
        if val_batches is None:
            return
        val_loss, figures = evaluate(engine, val_batches, train.eval_batches, train.micro_batch_size)
        if not main:
            return
        record = {"step": step, "val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50)),
                  **{f"val_{name}": value for name, value in figures.items()}}
        if job.validate is not None and engine.layout.whole:
            record.update(job.validate(model))
        if train.sample_tokens and prompts:
            record["samples"] = _samples(model, load_tokenizer(job.tokenizer), prompts, train.sample_tokens, train.seed)
            for text in record["samples"]:
                tqdm.write(f"  sample @ {step}: {text!r}")
        metrics.write(record)
        figures = "".join(f", {key} {value:.4f}" for key, value in record.items() if key in VALIDATION_FIGURES)
        tqdm.write(f"step {step}: val_loss {val_loss:.4f}, perplexity {record['val_perplexity']:.2f}{figures}")

    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    step = start_step
    window_losses, window_start, window_tokens, window_figures = [], time.perf_counter(), 0, []
    progress = tqdm(total=train.steps, initial=start_step, desc=job.kind, unit="step", dynamic_ncols=True, disable=not main)
    with stop.installed():
        if start_step == 0:
            run_eval(0)
        while step < train.steps:
            if job.before_step is not None:
                job.before_step(step)
            lr = learning_rate(step, train)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # The whole global batch's count first: each micro-batch's summed loss is divided by it.
            batches = [train_batches.next_batch(train.micro_batch_size) for _ in range(train.grad_accum)]
            local_count = sum(job.objective.count(batch) for batch in batches)
            count = topology.mean(local_count) * topology.dp_degree
            if count == 0:
                raise LmforgeError(f"step {step + 1}: no item of the batch is trained (every target is masked); "
                                   "check the examples' loss masks (--train-on) and the context length")
            step_loss = 0.0
            for micro_step, batch in enumerate(batches):
                step_loss += engine.train_micro_batch(batch, topology.dp_degree / count, last=micro_step == train.grad_accum - 1)
            step_loss = topology.mean(step_loss, present=engine.layout.last_stage) * topology.dp_degree / count  # the global mean
            step_tokens = round(topology.mean(sum(batch["inputs"].numel() for batch in batches)) * topology.dp_degree)
            step_figures = objective_figures(job.objective, topology, count)
            step += 1
            tokens_seen += step_tokens
            if not math.isfinite(step_loss):
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                if main:
                    warn(f"step {step}: loss is {step_loss}; skipping this update ({bad_steps}/{train.max_bad_steps})")
                if bad_steps > train.max_bad_steps:
                    saved = list_checkpoints(train_dir)
                    where = (f"the last good checkpoint is {saved[0]} (--resume continues from it)" if saved
                             else "no checkpoint was saved before it (a lower --train.save_every keeps one)")
                    raise LmforgeError(
                        f"loss was NaN/inf on {bad_steps} steps; stopped at step {step}. Lower --train.lr or use "
                        f"--train.precision fp32; {where}")
                progress.update(1)
                continue
            grad_norm = engine.optimizer_step(optimizer, train.grad_clip)

            window_losses.append(step_loss)
            window_figures.append(step_figures)
            window_tokens += step_tokens
            progress.update(1)
            if step % train.log_every == 0 or step == train.steps:
                elapsed = time.perf_counter() - window_start
                tokens_per_sec = window_tokens / elapsed
                record = {"step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tokens_per_sec,
                          "mfu": tokens_per_sec * flops_per_token / (peak_flops * topology.world_size),
                          "tokens": tokens_seen, "memory_mb": _memory_mb(device),
                          **{name: sum(figures[name] for figures in window_figures) / len(window_figures)
                             for name in window_figures[-1]}}
                metrics.write(record)
                progress.set_postfix(loss=f"{sum(window_losses) / len(window_losses):.3f}", lr=f"{lr:.2e}",
                                     tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{record['mfu']:.1%}")
                window_losses, window_start, window_tokens, window_figures = [], time.perf_counter(), 0, []
            if train.eval_every and step % train.eval_every == 0 and step != train.steps:
                run_eval(step)
            stopping = topology.agree(stop.signal is not None)
            if (train.save_every and step % train.save_every == 0) or step == train.steps or stopping:
                save(step)
            if stopping:
                progress.close()
                signum = stop.signal or signal.SIGTERM
                if main:
                    print(f"\n{signal.Signals(signum).name}: saved a checkpoint at step {step}; continue with --resume", file=sys.stderr)
                raise SystemExit(128 + signum)
        if start_step < train.steps or val_loss is None:
            run_eval(step)
    progress.close()
    metrics.close()
    return RunResult(step=step, val_loss=val_loss, out=out)
