"""What differs between runs of the one training loop: the objective.

An objective turns a micro-batch (a dict of tensors from a batch source) into the SUM of its
items' losses, and says how many items it sums over (`count`: supervised tokens, examples, pairs).
The loop divides by the count of the whole global batch — every micro-batch on every
data-parallel rank — so gradient accumulation and data parallelism give the gradient of one big
batch even when micro-batches hold different numbers of supervised tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

IGNORE = -100  # a target that is not trained (prompt tokens, padding, the next example's first token)

Batch = dict[str, torch.Tensor]


class Objective(Protocol):
    def count(self, batch: Batch) -> int:
        """The number of items `loss` sums over."""

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        """The sum of the batch's item losses (a scalar in fp32), computed with `model`, the
        callable the layout runs (the module, its compiled form or its DDP wrapper)."""
