"""Reward models: trained on pairs whose chosen response always says "good", they learn to score
it higher; a score does not depend on padding; `align reward-score` prints one score a row in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.cli import run
from lmforge.data.examples.preferences import read_preferences, tokenize_pairs
from lmforge.tokenizer import load_tokenizer
from lmforge.train.alignment import load_reward_model, score_sequences

FAST = {"micro_batch_size": 4, "warmup_steps": 1, "lr": 3e-3, "eval_every": 15, "eval_batches": 50, "precision": "fp32",
        "peak_flops": 1e12, "log_every": 5, "save_every": 30}


@pytest.fixture(scope="module")
def reward_model(align_base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reward") / "rm"
    argv = ["align", "reward", str(align_base / "base"), "--data", str(align_base / "pairs.jsonl"), "--out", str(out),
            "--val-fraction", "0.25", *[item for key, value in {**FAST, "steps": 30}.items()
                                        for item in (f"--train.{key}", str(value))]]
    assert run(argv) == 0
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_model_learns_the_preference(reward_model):
    validation = [line for line in _metrics(reward_model) if "val_loss" in line]
    assert validation[0]["step"] == 0 and validation[0]["val_accuracy"] <= 0.5  # a zero head: every margin is 0
    assert validation[-1]["step"] == 30
    assert validation[-1]["val_accuracy"] >= 0.9 and validation[-1]["val_margin"] > 1
    assert validation[-1]["val_loss"] < 0.3
    training = [line for line in _metrics(reward_model) if "loss" in line]
    assert {"accuracy", "margin"} <= set(training[-1])


def test_scores_do_not_depend_on_padding_or_batch(reward_model, align_base):
    model, head, tokenizer, _ = load_reward_model(reward_model)
    examples, _ = read_preferences([align_base / "pairs.jsonl"])
    pairs, _ = tokenize_pairs(examples[:5], load_tokenizer(align_base / "tokenizer.json"), None, context_length=48)
    sequences = [pair.prompt + pair.chosen for pair in pairs] + [pair.prompt + pair.rejected for pair in pairs]
    alone = [score_sequences(model, head, [sequence])[0] for sequence in sequences]
    together = score_sequences(model, head, sequences, batch_size=10)
    assert together == pytest.approx(alone, abs=1e-5)
    chosen, rejected = torch.tensor(alone).chunk(2)
    assert bool((chosen > rejected).all())


def test_reward_score_prints_one_score_a_row_in_order(reward_model, tmp_path, capsys):
    rows = [{"prompt": "Tell me about tea.", "response": "Tea is good and warm."},
            {"prompt": "Tell me about tea.", "response": "Tea is bad."},
            {"prompt": "Tell me about the moon.", "response": "The moon is good and calm."}]
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run(["align", "reward-score", str(reward_model), "--data", str(data)]) == 0
    scores = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    assert len(scores) == 3 and scores[0] > scores[1] and scores[2] > scores[1]


def test_reward_score_refuses_a_model_without_a_reward_head(align_base, tmp_path, capsys):
    data = tmp_path / "responses.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    assert run(["align", "reward-score", str(align_base / "base"), "--data", str(data)]) == 1
    assert "not a reward model (no reward.json)" in capsys.readouterr().err
