"""Objectives on preference pairs (`lmforge.data.examples.preferences.PairBatches`): a reward
model's Bradley–Terry loss, and DPO. One item is one pair.

Both keep running sums of their figures (reward margins, accuracies …) over the micro-batches
they see; the loop takes them after each step (`take_figures`) and divides by the global count
of pairs, as it does the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.train.objectives import IGNORE, Batch, Figures
from lmforge.train.objectives.classification import ClassificationHead

DpoLoss = Literal["sigmoid", "ipo"]


def pair_count(batch: Batch) -> int:
    return batch["inputs"].shape[0] // 2


def sequence_log_probs(model: Callable[..., torch.Tensor], batch: Batch, average: bool = False) -> torch.Tensor:
    """Each row's log-probability of its response [rows] (fp32): the sum over the response's
    tokens, or their mean with `average`."""
    targets = batch["targets"]
    per_token = model(batch["inputs"], targets=targets, log_probs=True)
    total = per_token.sum(dim=-1)
    return total / (targets != IGNORE).sum(dim=-1).clamp(min=1) if average else total


def dpo_losses(chosen: torch.Tensor, rejected: torch.Tensor, reference_chosen: torch.Tensor,
               reference_rejected: torch.Tensor, beta: float, loss: DpoLoss = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen rewards, rejected rewards), one a pair, from policy and reference
    log-probabilities of the responses.

    sigmoid (Rafailov et al. 2023, eq. 7): −log σ(β·[(π_c − ref_c) − (π_r − ref_r)]);
    ipo (Azar et al. 2023, eq. 17): ([(π_c − ref_c) − (π_r − ref_r)] − 1/(2β))².
    A response's implicit reward is β·(π − ref)."""
    chosen_ratio, rejected_ratio = chosen - reference_chosen, rejected - reference_rejected
    margin = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif loss == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}; choose sigmoid or ipo")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@dataclass
class DPO:
    """Direct preference optimisation against reference log-probabilities carried by the batch
    (`reference`: computed once before training, or by the job with the adapter switched off)."""

    beta: float = 0.1
    loss_type: DpoLoss = "sigmoid"
    average: bool = False
    """Mean log-probability over a response's tokens instead of the sum (IPO's convention)."""
    reference: Callable[[Batch], torch.Tensor] | None = None
    """Computes the batch's reference log-probabilities when the batch does not carry them."""
    figures: Figures = field(default_factory=Figures)

    def count(self, batch: Batch) -> int:
        return pair_count(batch)

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        logps = sequence_log_probs(model, batch, self.average)
        reference = batch["reference"] if "reference" in batch else self.reference(batch)
        chosen, rejected = logps.chunk(2)
        reference_chosen, reference_rejected = reference.to(logps).chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_losses(chosen, rejected, reference_chosen, reference_rejected,
                                                              self.beta, self.loss_type)
        self.figures.add(**{"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                            "rewards/margins": chosen_rewards - rejected_rewards,
                            "rewards/accuracies": (chosen_rewards > rejected_rewards).double(),
                            "logps/chosen": chosen, "logps/rejected": rejected})
        return losses.sum()

    def take_figures(self) -> dict[str, float]:
        return self.figures.take()


def pair_scores(model: Callable[..., torch.Tensor], head: ClassificationHead, batch: Batch) -> torch.Tensor:
    """The reward head's score of every row [rows] (fp32)."""
    return head(model(batch["inputs"], hidden_states=True), batch["last"]).squeeze(-1)


@dataclass
class PairwiseReward:
    """A reward model's Bradley–Terry loss −log σ(r_chosen − r_rejected), a scalar head on each
    sequence's last token (InstructGPT's reward model)."""

    head: ClassificationHead
    figures: Figures = field(default_factory=Figures)

    def count(self, batch: Batch) -> int:
        return pair_count(batch)

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        chosen, rejected = pair_scores(model, self.head, batch).chunk(2)
        margin = chosen - rejected
        self.figures.add(accuracy=(margin > 0).double(), margin=margin)
        return -F.logsigmoid(margin).sum()

    def take_figures(self) -> dict[str, float]:
        return self.figures.take()
