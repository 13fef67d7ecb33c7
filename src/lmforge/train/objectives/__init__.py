"""What differs between runs of the one training loop: the objective.

An objective turns a micro-batch (a dict of tensors from a batch source) into the SUM of its
items' losses, and says how many items it sums over (`count`: supervised tokens, examples, pairs).
The loop divides by the count of the whole global batch — every micro-batch on every
data-parallel rank — so gradient accumulation and data parallelism give the gradient of one big
batch even when micro-batches hold different numbers of supervised tokens.
"""

from __future__ import annotations

from collections import defaultdict
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


class Figures:
    """What an objective may keep besides its loss (DPO's rewards, a reward model's accuracy):
    sums of per-item figures since they were last taken (`take_figures`, which the loop calls and
    divides by the global count); `add_means` keeps figures of other units (a rollout's sequences,
    when the items are tokens) as (sum, how many)."""

    def __init__(self) -> None:
        self._sums: dict[str, float | tuple[float, int]] = defaultdict(float)

    def add(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self._sums[name] += float(value.detach().double().sum())

    def add_means(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            total, count = self._sums.get(name) or (0.0, 0)
            self._sums[name] = (total + float(value.detach().double().sum()), count + value.numel())

    def take(self) -> dict[str, float | tuple[float, int]]:
        sums, self._sums = dict(self._sums), defaultdict(float)
        return sums
