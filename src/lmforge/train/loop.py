"""The one training loop, for pretraining and fine-tuning alike: what differs is the job
(`lmforge.train.job.TrainingJob`: the model and its trainable parameters, the objective, the
batches). Resumption is exact: model, optimizer, schedule, RNG and data position.

The loop decides when things happen (log, validate, save, stop on a signal); `Trainer`
(`lmforge.train.trainer`) holds the run and takes each step. The same loop runs on one device or on
many processes under torchrun: data-parallel ranks read disjoint shares of every global batch,
losses and norms are reduced over ranks, and rank 0 alone prints and writes files."""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.distributed.mesh import Topology
from lmforge.errors import RunStopped
from lmforge.model.config import ModelConfig
from lmforge.runtime import resolve_device
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.job import TrainingJob
from lmforge.train.pretraining import pretraining_job
from lmforge.train.trainer import StepOutcome, Trainer, build_trainer


@dataclass
class RunResult:
    step: int
    val_loss: float | None
    out: Path


class _StopRequest:
    """SIGINT / SIGTERM set a flag; the loop saves a checkpoint after the current step and stops."""

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


@dataclass
class _LogWindow:
    """The steps since the last training line of metrics.jsonl: it reports their throughput and
    their mean figures."""

    losses: list[float] = field(default_factory=list)
    figures: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, outcome: StepOutcome) -> None:
        self.losses.append(outcome.loss)
        self.figures.append(outcome.figures)
        self.tokens += outcome.tokens

    def record(self, trainer: Trainer, outcome: StepOutcome) -> dict:
        tokens_per_sec = self.tokens / (time.perf_counter() - self.start)
        return {"step": trainer.step, "loss": outcome.loss, "lr": outcome.lr, "grad_norm": outcome.grad_norm,
                "tokens_per_sec": tokens_per_sec,
                "mfu": tokens_per_sec * trainer.flops_per_token / (trainer.peak_flops * trainer.topology.world_size),
                "tokens": trainer.tokens_seen, "memory_mb": _memory_mb(trainer.topology.device),
                **{name: sum(figures[name] for figures in self.figures) / len(self.figures) for name in self.figures[-1]}}


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
    """Train `job` into the checkpoint directory `out`, resuming the run there with `resume`.
    A SIGINT or SIGTERM saves a checkpoint after the current step and raises `RunStopped`."""
    topology = topology or Topology(device=resolve_device(train.device))
    trainer = build_trainer(job, out, train, resume, parallel or ParallelConfig(), topology)
    train, start_step, main = trainer.train, trainer.step, topology.is_main
    stop, window = _StopRequest(), _LogWindow()
    progress = tqdm(total=train.steps, initial=start_step, desc=job.kind, unit="step", dynamic_ncols=True, disable=not main)
    with stop.installed():
        if start_step == 0:
            trainer.validate()
        while trainer.step < train.steps:
            outcome = trainer.train_step()
            progress.update(1)
            if outcome.grad_norm is None:  # skipped: nothing changed to log or save
                continue
            step = trainer.step
            window.add(outcome)
            if step % train.log_every == 0 or step == train.steps:
                record = window.record(trainer, outcome)
                trainer.metrics.write(record)
                progress.set_postfix(loss=f"{sum(window.losses) / len(window.losses):.3f}", lr=f"{outcome.lr:.2e}",
                                     tok_s=f"{record['tokens_per_sec']:,.0f}", mfu=f"{record['mfu']:.1%}")
                window = _LogWindow()
            if train.eval_every and step % train.eval_every == 0 and step != train.steps:
                trainer.validate()
            stopping = topology.agree(stop.signal is not None)
            if (train.save_every and step % train.save_every == 0) or step == train.steps or stopping:
                trainer.save()
            if stopping:
                progress.close()
                signum = stop.signal or signal.SIGTERM
                if main:
                    print(f"\n{signal.Signals(signum).name}: saved a checkpoint at step {step}; continue with --resume",
                          file=sys.stderr)
                raise RunStopped(signum)
        if start_step < train.steps or trainer.val_loss is None:
            trainer.validate()
    progress.close()
    trainer.metrics.close()
    return RunResult(step=trainer.step, val_loss=trainer.val_loss, out=out)
