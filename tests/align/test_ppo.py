"""PPO on the one loop: with a programmatic reward the mean reward rises while the KL to the
reference stays bounded; a large KL coefficient keeps the policy near the reference; a run
resumes exactly (the rollout buffer is part of the checkpoint); the pieces are the textbook
formulas."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.cli import run
from lmforge.distributed.mesh import Topology
from lmforge.model.checkpoint_directory import load_checkpoint
from lmforge.train.alignment import save_reward_head
from lmforge.train.config import TrainConfig
from lmforge.train.loop import run_job
from lmforge.train.objectives.classification import ClassificationHead
from lmforge.train.objectives.ppo import advantages_and_returns, token_rewards
from lmforge.train.ppo import PpoOptions, ppo_job

TARGETS = 30  # the reward: how many of a response's tokens have an id below this (a tenth of the vocabulary)


@pytest.fixture(scope="module")
def setup(align_base, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ppo")
    reward = root / "rm"  # a reward model directory (the programmatic reward replaces its scores)
    shutil.copytree(align_base / "base", reward)
    save_reward_head(ClassificationHead(load_checkpoint(reward).config.d_model, 1), reward)
    topics = ["the sea", "tea", "rain", "music", "bread", "the moon", "snow", "coffee"]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about {topic}."}) + "\n" for topic in topics))
    return root


def _programmatic(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
    return [float(sum(token < TARGETS for token in response)) for response in responses]


def _run(align_base: Path, setup: Path, out: Path, steps: int, kl_coef: float, resume: bool = False, **more) -> list[dict]:
    train = TrainConfig(steps=steps, micro_batch_size=4, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0,
                        eval_every=0, save_every=4, log_every=1, sample_tokens=0, precision="fp32", peak_flops=1e12)
    options = PpoOptions(kl_coef=kl_coef, rollout_batch=8, ppo_epochs=2, max_new_tokens=6, temperature=1.0, **more)
    job = ppo_job(align_base / "base", [setup / "prompts.jsonl"], out, train, Topology(device=torch.device("cpu")),
                  options, reward_model=setup / "rm")
    job.train_batches.reward = _programmatic
    run_job(job, out, train, resume)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_while_kl_stays_bounded(align_base, setup, tmp_path):
    metrics = _run(align_base, setup, tmp_path / "ppo", steps=40, kl_coef=0.02)
    rewards = [line["reward"] for line in metrics if "reward" in line]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 1.0, (first, last)  # of 6 sampled tokens, about 0.6 are targets at first
    assert all(line["kl"] < 20 for line in metrics if "kl" in line)
    assert {"clip_fraction", "entropy", "value_loss", "kl", "reward"} <= set(metrics[-1])


def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(align_base, setup, tmp_path):
    free = _run(align_base, setup, tmp_path / "free", steps=16, kl_coef=0.0)
    held = _run(align_base, setup, tmp_path / "held", steps=16, kl_coef=100.0)
    # KL of the last two rollouts (the first is sampled before any update: 0 for both)
    free_kl, held_kl = (sum(line["kl"] for line in metrics if "kl" in line and line["step"] > 8) / 8
                        for metrics in (free, held))
    assert held_kl < free_kl / 2, (held_kl, free_kl)


def test_resume_mid_ppo_is_exact(align_base, setup, tmp_path):
    whole = _run(align_base, setup, tmp_path / "whole", steps=8, kl_coef=0.05)
    out = tmp_path / "resumed"
    _run(align_base, setup, out, steps=8, kl_coef=0.05)
    shutil.rmtree(out / "train" / "step-000008")  # killed after step 4's checkpoint, mid-rollout (a rollout is 4 steps)
    resumed = _run(align_base, setup, out, steps=8, kl_coef=0.05, resume=True)
    losses = [{line["step"]: line["loss"] for line in metrics if "loss" in line} for metrics in (whole, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_lora_ppo_measures_kl_against_the_adapter_off(align_base, setup, tmp_path):
    """With LoRA the reference is the policy with its adapter off: KL 0 on the first rollout
    (B starts at zero), not 0 once the adapter has trained; the result is a LoRA fine-tune."""
    from lmforge.peft import LoraConfig, load_finetuned

    metrics = _run(align_base, setup, tmp_path / "lora", steps=8, kl_coef=0.05, method="lora",
                   peft_config=LoraConfig(r=4, alpha=8.0, targets="all-linear"))
    kls = [line["kl"] for line in metrics if "kl" in line]
    assert kls[0] == 0.0 and abs(kls[-1]) > 1e-4
    model = load_finetuned(tmp_path / "lora")
    assert not any(name.startswith("value_head") for name, _ in model.named_parameters())


def test_gae_and_kl_penalised_rewards_are_the_textbook_recursion():
    torch.manual_seed(0)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    logps, reference, values = torch.randn(3, 2, 5).double().unbind()
    scores = torch.tensor([1.0, -2.0], dtype=torch.float64)
    rewards, kl = token_rewards(scores, logps * mask, reference * mask, mask, 0.1)
    gamma, lam = 0.9, 0.8
    advantages, returns = advantages_and_returns(rewards, values * mask, mask, gamma, lam)
    for row in range(2):
        positions = mask[row].nonzero().flatten().tolist()
        r = [-0.1 * (logps[row, t] - reference[row, t]) for t in positions]
        r[-1] = r[-1] + scores[row]
        v = [values[row, t] for t in positions] + [0.0]
        expected, following = [], 0.0
        for i in reversed(range(len(positions))):
            following = r[i] + gamma * v[i + 1] - v[i] + gamma * lam * following
            expected.insert(0, following)
        assert torch.allclose(advantages[row, positions], torch.stack([torch.as_tensor(a) for a in expected]))
        assert torch.allclose(returns[row, positions], advantages[row, positions] + values[row, positions])
        assert float(advantages[row, ~mask[row]].abs().sum()) == 0.0


def test_ppo_command_refuses_a_reward_model_with_another_tokenizer(align_base, setup, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(setup / "rm", other)
    from lmforge.tokenizer import train_tokenizer

    train_tokenizer(["completely different words here"] * 20, vocab_size=280).save(other)
    code = run(["align", "ppo", str(align_base / "base"), "--reward-model", str(other), "--prompts",
                str(setup / "prompts.jsonl"), "--out", str(tmp_path / "out"), "--rollout-batch", "8"])
    assert code == 1
    assert "the reward model's tokenizer differs from the policy's" in capsys.readouterr().err
