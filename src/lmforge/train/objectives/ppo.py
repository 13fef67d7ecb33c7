"""PPO (Schulman et al. 2017) as InstructGPT used it for language models: the policy's tokens are
actions, the reward model scores a whole response at its last token, and every token pays
β·(log π(t) − log π_ref(t)), a per-token estimate of the KL divergence to the frozen starting model.
Advantages come from generalised advantage estimation over the response's tokens with a value
head on the policy's hidden states; the loss is the clipped surrogate plus the clipped value loss.
One item is one response token.

The rollouts (responses, old log-probabilities, values, advantages, returns) come with the batch:
`lmforge.train.ppo.Rollouts` samples them with the current policy between optimisation steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.train.objectives import IGNORE, Batch, Figures


class ValueHead(nn.Module):
    """V(s_t) = w · h_t + b on every position's final-norm state, in fp32; zero-initialised (the
    first value estimates are 0 and its first gradients do not disturb the policy)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, d_model))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return (hidden.float() @ self.weight.float().t() + self.bias.float()).squeeze(-1)


def token_rewards(scores: torch.Tensor, logps: torch.Tensor, reference_logps: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B, T], kl [B, T]): −kl_coef·(log π − log π_ref) on every response token (`mask`),
    plus each response's score on its last token."""
    kl = (logps - reference_logps) * mask
    rewards = -kl_coef * kl
    last = mask.shape[1] - 1 - mask.flip(1).float().argmax(dim=1)  # each row's last response position
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def advantages_and_returns(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                           lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's response positions
    (`mask`; one contiguous run a row): δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, with
    V = 0 after the last token; returns R_t = A_t + V_t. Zero outside the mask."""
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    following_value = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    following_advantage = torch.zeros_like(following_value)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * following_value - values[:, t]
        advantage = delta + gamma * lam * following_advantage
        advantages[:, t] = advantage * mask[:, t]
        # Positions outside the response pass nothing back: padding after, the prompt before.
        following_value = torch.where(mask[:, t] > 0, values[:, t], following_value)
        following_advantage = torch.where(mask[:, t] > 0, advantage, following_advantage)
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over the masked entries (the rollout batch's advantages)."""
    mask = mask.to(values.dtype)
    mean = (values * mask).sum() / mask.sum()
    variance = ((values - mean) ** 2 * mask).sum() / mask.sum().clamp(min=2)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


@dataclass
class PPO:
    """The clipped surrogate −min(ρ·A, clip(ρ, 1 ± ε)·A) with ρ = π/π_old, plus `value_coef` ×
    ½·max((V − R)², (clip(V, V_old ± ε_v) − R)²), summed over response tokens."""

    output: Callable[[torch.Tensor], torch.Tensor]
    """The policy's output layer (hidden → logits)."""
    value_head: ValueHead
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    figures: Figures = field(default_factory=Figures)

    def count(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        hidden = model(batch["inputs"], hidden_states=True)
        mask = batch["targets"] != IGNORE
        values = self.value_head(hidden)[mask]
        log_probs = self.output(hidden[mask]).float().log_softmax(dim=-1)
        logps = log_probs.gather(1, batch["targets"][mask][:, None]).squeeze(1)
        advantages, returns = batch["advantages"][mask].float(), batch["returns"][mask].float()
        old_logps, old_values = batch["old_logps"][mask].float(), batch["old_values"][mask].float()
        ratio = (logps - old_logps).exp()
        policy_loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - self.clip, 1 + self.clip))
        clipped_values = old_values + (values - old_values).clamp(-self.value_clip, self.value_clip)
        value_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
            self.figures.add(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                             clip_fraction=((ratio - 1).abs() > self.clip).double(),
                             approx_kl=0.5 * (logps - old_logps) ** 2)
            self.figures.add_means(reward=batch["score"], kl=batch["kl"], response_tokens=mask.sum(dim=1))
        return (policy_loss + self.value_coef * value_loss).sum()

    def take_figures(self) -> dict[str, float]:
        return self.figures.take()
