"""What one training run holds between its steps, and the step itself: `build_trainer` lays the
job's model out, builds its optimizer and counters (fresh, or resumed exactly from the run
directory), and `Trainer.train_step` takes one optimizer step over a global batch. When to log,
validate, save and stop is the loop's (`lmforge.train.loop`); keeping it out of here lets a test
or a benchmark drive the steps itself."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError, warn
from lmforge.infer.generate import generate_tokens
from lmforge.model.accounting import model_cost
from lmforge.model.checkpoint_directory import model_state, save_checkpoint
from lmforge.model.transformer import Transformer
from lmforge.runtime import DTYPES, resolve_precision
from lmforge.tokenizer import load_tokenizer
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.job import Batches, TrainingJob
from lmforge.train.metrics import MetricsLog, truncate_metrics
from lmforge.train.mfu import measure_peak_flops
from lmforge.train.optimizer import build_optimizer
from lmforge.train.resume_state import (
    TrainState,
    list_checkpoints,
    load_latest_train_state,
    optimizer_state_by_name,
    restore_train_state,
    save_sharded_train_state,
    save_train_state,
)
from lmforge.train.schedule import learning_rate
from lmforge.train.step import TrainStep

# printed beside the validation loss when a job's `validate` or its objective gives them
VALIDATION_FIGURES = ("val_accuracy", "val_macro_f1", "val_margin", "val_rewards/accuracies", "val_rewards/margins")


def evaluate(engine: TrainStep, batches: Batches, micro_batches: int, batch_size: int) -> tuple[float, dict[str, float]]:
    """Mean loss per item (supervised token, example, pair) over the first `micro_batches`
    micro-batches of the validation split (all of it when it is smaller; the last batch may be
    short), over every data-parallel rank's share; and the objective's figures, means per item."""
    topology = engine.topology
    batches.load_state_dict({**batches.state_dict(), "epoch": 0, "position": 0})
    getattr(engine.objective, "take_figures", dict)()  # drop what training left
    total, count = 0.0, 0
    rows = max(1, min(micro_batches * batch_size, len(batches) // topology.dp_degree))
    for start in range(0, rows, batch_size):
        batch = batches.next_batch(min(batch_size, rows - start))
        total += engine.eval_loss(batch)
        count += engine.objective.count(batch)
    total, count = topology.mean(total, present=engine.layout.last_stage), topology.mean(count)
    figures = objective_figures(engine.objective, topology, count * topology.dp_degree)
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


@dataclass
class StepOutcome:
    """One optimizer step as the log reports it; `grad_norm` is None where the step was skipped
    (its loss was not finite)."""

    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    figures: dict[str, float]


@dataclass
class Trainer:
    """A run in progress: the job, its layout and optimizer, and the counters a checkpoint keeps."""

    job: TrainingJob
    train: TrainConfig  # its precision resolved for the device
    topology: Topology
    engine: TrainStep
    optimizer: torch.optim.Optimizer
    out: Path
    metrics: MetricsLog
    flops_per_token: int
    peak_flops: float
    trainable: set[str]  # what a frozen-base job's training checkpoints hold
    step: int = 0
    bad_steps: int = 0
    tokens_seen: int = 0
    val_loss: float | None = None

    def train_step(self) -> StepOutcome:
        """One optimizer step over a global batch. A step whose loss is not finite changes nothing
        but the counters; after `max_bad_steps` of them the run stops with an error."""
        job, train, topology, engine = self.job, self.train, self.topology, self.engine
        if job.before_step is not None:
            job.before_step(self.step)
        lr = learning_rate(self.step, train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The whole global batch's count first: each micro-batch's summed loss is divided by it.
        batches = [job.train_batches.next_batch(train.micro_batch_size) for _ in range(train.grad_accum)]
        count = topology.mean(sum(job.objective.count(batch) for batch in batches)) * topology.dp_degree
        if count == 0:
            raise LmforgeError(f"step {self.step + 1}: no item of the batch is trained (every target is masked); "
                               "check the examples' loss masks (--train-on) and the context length")
        loss = 0.0
        for micro_step, batch in enumerate(batches):
            loss += engine.train_micro_batch(batch, topology.dp_degree / count, last=micro_step == train.grad_accum - 1)
        loss = topology.mean(loss, present=engine.layout.last_stage) * topology.dp_degree / count  # the global mean
        tokens = round(topology.mean(sum(batch["inputs"].numel() for batch in batches)) * topology.dp_degree)
        figures = objective_figures(job.objective, topology, count)
        self.step += 1
        self.tokens_seen += tokens
        if math.isfinite(loss):
            return StepOutcome(loss, lr, engine.optimizer_step(self.optimizer, train.grad_clip), tokens, figures)
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        if topology.is_main:
            warn(f"step {self.step}: loss is {loss}; skipping this update ({self.bad_steps}/{train.max_bad_steps})")
        if self.bad_steps > train.max_bad_steps:
            saved = list_checkpoints(self.out / "train")
            where = (f"the last good checkpoint is {saved[0]} (--resume continues from it)" if saved
                     else "no checkpoint was saved before it (a lower --train.save_every keeps one)")
            raise LmforgeError(f"loss was NaN/inf on {self.bad_steps} steps; stopped at step {self.step}. Lower --train.lr "
                               f"or use --train.precision fp32; {where}")
        return StepOutcome(loss, lr, None, tokens, figures)

    def validate(self) -> None:
        """Validation loss (and the job's figures and samples) at the current step, logged by rank 0."""
        job, train, engine, model = self.job, self.train, self.engine, self.job.model
        if job.val_batches is None:
            return
        self.val_loss, figures = evaluate(engine, job.val_batches, train.eval_batches, train.micro_batch_size)
        if not self.topology.is_main:
            return
        record = {"step": self.step, "val_loss": self.val_loss, "val_perplexity": math.exp(min(self.val_loss, 50)),
                  **{f"val_{name}": value for name, value in figures.items()}}
        if job.validate is not None and engine.layout.whole:
            record.update(job.validate(model))
        prompts = job.sample_prompts if engine.layout.whole else []
        if train.sample_tokens and prompts:
            record["samples"] = _samples(model, load_tokenizer(job.tokenizer), prompts, train.sample_tokens, train.seed)
            for text in record["samples"]:
                tqdm.write(f"  sample @ {self.step}: {text!r}")
        self.metrics.write(record)
        figures = "".join(f", {key} {value:.4f}" for key, value in record.items() if key in VALIDATION_FIGURES)
        tqdm.write(f"step {self.step}: val_loss {self.val_loss:.4f}, perplexity {record['val_perplexity']:.2f}{figures}")

    def save(self) -> None:
        """A training checkpoint of the current step under OUT/train, and the model files in OUT.
        Collective: every rank calls it."""
        job, train, topology, engine, step = self.job, self.train, self.topology, self.engine, self.step
        state = {"data": job.train_batches.state_dict(), "bad_steps": self.bad_steps, "tokens": self.tokens_seen,
                 **job.identity, "train_config": dataclasses.asdict(train)}
        exported = job.model
        if topology.distributed:
            state["layout"] = topology.layout()
            path = save_sharded_train_state(self.out / "train", step, engine.layout.model, self.optimizer, state,
                                            train.keep_last, topology)
            if topology.is_main and not engine.layout.whole:  # rank 0 alone reads the whole model back from the shards
                from lmforge.distributed.sharded_checkpoint import load_consolidated

                exported = load_consolidated(path, job.config, job.rebuild)
        else:
            weights = model_state(job.model)
            if job.frozen_base:  # the rest is the starting checkpoint's, rebuilt on resume
                weights = {name: tensor for name, tensor in weights.items() if name in self.trainable}
            save_train_state(self.out / "train", step, weights, self.optimizer.state_dict(), state, train.keep_last)
        if topology.is_main:
            if job.save_model is not None:
                job.save_model(exported, self.out, step == train.steps)
            else:
                save_checkpoint(exported, self.out, tokenizer=job.tokenizer, generation=job.generation)
        topology.barrier()


def _check_resumable(resumed: TrainState, job: TrainingJob) -> None:
    """A checkpoint resumes only the job it was saved by (same model config, same method ...)."""
    identity = json.loads(json.dumps(job.identity))  # as state.json holds it: tuples are lists
    differing = next((key for key, value in identity.items() if resumed.state.get(key) != value), None)
    if differing == "model_config":
        raise LmforgeError(f"{resumed.path}: saved with a different model config than this command's --model")
    if differing is not None:
        raise LmforgeError(f"{resumed.path}: saved with a different {differing.replace('_', ' ')} than this command's")


def build_trainer(job: TrainingJob, out: Path, train: TrainConfig, resume: bool, parallel: ParallelConfig,
                  topology: Topology) -> Trainer:
    """Lay `job` out over `topology` with a fresh optimizer, or, with `resume`, continue the run in
    `out` exactly where its newest sound checkpoint left it (weights, optimizer, RNG, data position)."""
    device, main = topology.device, topology.is_main
    train = dataclasses.replace(train, precision=resolve_precision(train.precision, device))
    if train.precision == "fp16" and device.type != "cuda":
        raise LmforgeError("--train.precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on CPU")
    check_run_directory(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    resumed = load_latest_train_state(out / "train") if resume else None
    if resume and resumed is None and main:
        print(f"nothing to resume in {out}; starting from step 0", file=sys.stderr)
    if resumed is not None:
        _check_resumable(resumed, job)

    optimizer_by_name = None
    if resumed is not None and not resumed.sharded and topology.distributed:
        optimizer_by_name = optimizer_state_by_name(job.model, build_optimizer(job.model, train), resumed.optimizer)
    engine = TrainStep(job.model, topology, job.objective, train, parallel)
    optimizer = build_optimizer(engine.layout.model, train)
    counters = {}
    if resumed is not None:
        _report_layout_change(resumed, topology, train)
        restore_train_state(resumed, engine.layout.model, optimizer, topology, optimizer_by_name)
        job.train_batches.load_state_dict(resumed.state["data"])
        counters = {"step": resumed.step, "bad_steps": resumed.state["bad_steps"], "tokens_seen": resumed.state["tokens"]}
        if main:
            truncate_metrics(out / "metrics.jsonl", resumed.step)
            print(f"resumed from {resumed.path} at step {resumed.step}", file=sys.stderr)
    elif not resume and main:
        (out / "metrics.jsonl").unlink(missing_ok=True)

    flops_per_token = job.flops_per_token or model_cost(job.config, context_length=job.context_length).flops_per_token
    if job.frozen_base:  # frozen weights get no gradient: the forward and the backward to the inputs, 2 of the 3
        flops_per_token = flops_per_token * 2 // 3
    peak_flops = train.peak_flops or measure_peak_flops(device, DTYPES[train.precision])
    if train.sample_tokens and not engine.layout.whole and main:
        warn("no samples during training: the model is sharded; run `lmforge generate` on the checkpoint in " + str(out))
    trainable = {name for name, parameter in job.model.named_parameters() if parameter.requires_grad}
    return Trainer(job, train, topology, engine, optimizer, out, MetricsLog(out, enabled=main), flops_per_token,
                   peak_flops, trainable, **counters)
