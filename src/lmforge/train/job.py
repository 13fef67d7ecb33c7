"""`TrainingJob`: what one run of the training loop trains, and on what — everything that differs
between pretraining and fine-tuning; the loop (`lmforge.train.loop`) is the same for both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.objectives import Batch, Objective


class Batches(Protocol):
    """A source of micro-batches that resumes exactly: its state is the data position."""

    def next_batch(self, size: int) -> Batch: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def __len__(self) -> int: ...


@dataclass
class TrainingJob:
    kind: str
    """"pretrain" or "finetune": the progress bar's label."""
    model: Transformer
    """On the CPU with its starting weights (fresh, or a checkpoint's) and its trainable
    parameters chosen (requires_grad); every rank builds the same one."""
    config: ModelConfig
    objective: Objective
    train_batches: Batches
    val_batches: Batches | None
    tokenizer: Path
    """The tokenizer.json written into every checkpoint."""
    context_length: int
    generation: dict = field(default_factory=dict)
    """generation.json of every checkpoint: stop tokens, chat template."""
    identity: dict = field(default_factory=dict)
    """What a checkpoint must have been saved with to be resumed by this job (the model config, the method)."""
    save_model: Callable[[Transformer, Path, bool], None] | None = None
    """Writes the checkpoint directory's model files (model, final?); default: `save_checkpoint`."""
    rebuild: Callable[[], Transformer] | None = None
    """The job's module structure on the meta device (a sharded run's rank 0 reads the whole model into it)."""
    validate: Callable[[Transformer], dict] | None = None
    """Extra validation figures (accuracy …) computed on rank 0 with the whole model."""
    sample_prompts: list[str] = field(default_factory=list)
    """Prompts continued in the log at each evaluation."""
    frozen_base: bool = False
    """Only some parameters train: training checkpoints hold just those (the rest come from the start)."""
    before_step: Callable[[int], None] | None = None
    """Called with the number of steps done before each step (QAT turns fake quantization on at its start step)."""
    flops_per_token: int | None = None
    """Training FLOPs a token, for MFU, when the objective does not run the whole model (a
    classification head instead of the output layer); default: the model's."""
