"""Training and parallelism settings: the `--train.*` and `--parallel.*` options and recipe keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from lmforge.bounds import Bound, above, at_least, between, check_fields


@dataclass
class TrainConfig:
    """How to train: optimisation, precision, schedule, evaluation and checkpoints."""

    steps: int = 1000
    """Optimizer steps to run in total."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on each data-parallel rank."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    context_length: int | None = None
    """Tokens per training sequence (default: the model's context length)."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The schedule decays to lr × min_lr_ratio."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """After warmup: cosine decay, warmup-stable-decay (linear decay over the last decay_fraction), or constant."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    decay_fraction: float = 0.2
    """wsd only: the share of steps spent decaying."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not to biases and norm gains)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision; master weights stay fp32. auto: bf16 where the hardware has it (GPU, CPU
    with AMX/AVX512-BF16), else fp32. fp16 (with loss scaling) needs CUDA."""
    compile: bool = False
    """Compile the model with torch.compile."""
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    """Recompute activations in backward: every block (full), every other block (selective), or none."""
    seed: int = 1337
    eval_every: int = 100
    """Validation loss every N steps (0: only at the end)."""
    eval_batches: int = 10
    """Micro-batches of the validation split per evaluation."""
    save_every: int = 500
    """Checkpoint every N steps (always at the end)."""
    keep_last: int = 2
    """Training checkpoints kept under OUT/train/."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    sample_prompts: tuple[str, ...] = ()
    """Prompts continued in the log at each evaluation (default: the opening of a validation window)."""
    sample_tokens: int = 32
    """Tokens sampled per prompt (0: no samples)."""
    max_bad_steps: int = 3
    """Steps with a NaN/inf loss that are skipped before training stops."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU (default: measured with a matmul at start)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **dict.fromkeys(("steps", "micro_batch_size", "grad_accum", "keep_last", "log_every", "eval_batches"), at_least(1)),
        **dict.fromkeys(("warmup_steps", "eval_every", "save_every", "max_bad_steps", "sample_tokens"), at_least(0)),
        "context_length": at_least(1),
        "lr": above(0),
        "min_lr_ratio": between(0, 1),
        "decay_fraction": between(0, 1, low_open=True),
        "weight_decay": at_least(0),
        "beta1": between(0, 1, high_open=True),
        "beta2": between(0, 1, high_open=True),
        "eps": above(0),
        "grad_clip": at_least(0),
        "peak_flops": above(0),
    }

    def __post_init__(self) -> None:
        check_fields(self, "--train.{}")


@dataclass
class ParallelConfig:
    """Degrees of parallelism; their product must equal the number of processes (torchrun's WORLD_SIZE)."""

    dp_replicate: int = 1
    """Data parallel with replicated weights (DDP)."""
    dp_shard: int = 1
    """Data parallel with sharded weights, gradients and optimizer state (FSDP2)."""
    tp: int = 1
    """Tensor parallel: attention heads and MLP columns split across ranks."""
    pp: int = 1
    """Pipeline parallel: layers split into stages."""
    pp_schedule: Literal["gpipe", "1f1b", "interleaved-1f1b"] = "1f1b"
    pp_microbatches: int = 4

    BOUNDS: ClassVar[dict[str, Bound]] = dict.fromkeys(("dp_replicate", "dp_shard", "tp", "pp", "pp_microbatches"), at_least(1))

    def __post_init__(self) -> None:
        check_fields(self, "--parallel.{}")

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp

    @property
    def dp_degree(self) -> int:
        return self.dp_replicate * self.dp_shard
