"""Next-token prediction: pretraining on token windows, and supervised fine-tuning, where only
some targets are trained (the others are IGNORE) and packed rows carry positions and segments."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmforge.model.loss import cross_entropy
from lmforge.train.objectives import IGNORE, Batch

ROW_KEYS = ("positions", "segments")  # what a packed row passes to the model besides its ids


@dataclass
class NextToken:
    fused: bool = True
    """The model computes the loss with its output layer (`targets=`), never building all logits;
    False where the loss runs on the logits: vocabulary-sharded ones (tensor parallel), or those a
    pipeline's last stage puts out."""

    def count(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        extra = {key: batch[key] for key in ROW_KEYS if key in batch}
        targets = batch["targets"]
        if self.fused:
            mean = model(batch["inputs"], targets=targets, **extra)
        else:
            mean = cross_entropy(model(batch["inputs"], **extra), targets)
        return mean * (targets != IGNORE).sum()
