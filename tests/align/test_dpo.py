"""DPO on the one loop: the loss, implicit rewards and gradients are the paper's formula; the
policy learns the pairs' preference; a run resumes exactly; pairs that carry no preference are
dropped and counted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.cli import run
from lmforge.data.examples.preferences import PairBatches, read_preferences, tokenize_pairs
from lmforge.model.checkpoint_directory import load_checkpoint
from lmforge.peft import load_finetuned
from lmforge.tokenizer import load_tokenizer
from lmforge.train.objectives.preference import DPO

FAST = {"micro_batch_size": 4, "warmup_steps": 1, "lr": 2e-3, "eval_every": 0, "eval_batches": 50, "precision": "fp32",
        "peak_flops": 1e12, "log_every": 1, "save_every": 3}


def _argv(base: Path, out: Path, *extra: str, steps: int = 6, **train) -> list[str]:
    options = {**FAST, "steps": steps, **train}
    return ["align", "dpo", str(base / "base"), "--data", str(base / "pairs.jsonl"), "--out", str(out), "--val-fraction",
            "0.25", *extra, *[item for key, value in options.items() for item in (f"--train.{key}", str(value))]]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _pairs_batch(align_base: Path, count: int = 6) -> PairBatches:
    examples, _ = read_preferences([align_base / "pairs.jsonl"])
    tokenizer = load_tokenizer(align_base / "tokenizer.json")
    pairs, _ = tokenize_pairs(examples[:count], tokenizer, None, context_length=48)
    return PairBatches(pairs, shuffle=False, pad_id=tokenizer.eos_id)


def _direct_log_probs(model, batch) -> torch.Tensor:
    """Σ over response tokens of log softmax(logits)[target], from the full logits."""
    logits = model(batch["inputs"]).double()
    targets = batch["targets"]
    picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * (targets != -100)).sum(-1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_rewards_and_gradients_are_the_dpo_formula(align_base, loss_type):
    """Rafailov et al. 2023, eq. 7 (and IPO's square), computed directly in fp64 from full logits."""
    policy = load_checkpoint(align_base / "base", dtype=torch.float64)
    reference = load_checkpoint(align_base / "base", dtype=torch.float64)
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that has moved away from the reference
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    source = _pairs_batch(align_base)
    batch = source.batch_of(range(6))
    tokens = (batch["targets"] != -100).sum(-1)
    with torch.no_grad():  # the reference's values come in the convention of the policy's: IPO averages
        reference_logps = _direct_log_probs(reference, batch) / (tokens if loss_type == "ipo" else 1)
    batch["reference"] = reference_logps
    beta = 0.3
    objective = DPO(beta=beta, loss_type=loss_type, average=loss_type == "ipo")
    loss = objective.loss(policy, batch)
    loss.backward()
    ours = {name: parameter.grad.clone() for name, parameter in policy.named_parameters()}
    policy.zero_grad()

    logps = _direct_log_probs(policy, batch)
    if loss_type == "ipo":  # IPO compares mean log-probabilities
        logps = logps / tokens
    chosen, rejected = logps.chunk(2)
    reference_chosen, reference_rejected = reference_logps.chunk(2)
    h = (chosen - reference_chosen) - (rejected - reference_rejected)
    expected = (-F.logsigmoid(beta * h) if loss_type == "sigmoid" else (h - 1 / (2 * beta)) ** 2).sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for name, parameter in policy.named_parameters():
        torch.testing.assert_close(ours[name], parameter.grad, rtol=1e-9, atol=1e-12, msg=name)

    figures = objective.take_figures()
    chosen_rewards, rejected_rewards = beta * (chosen - reference_chosen), beta * (rejected - reference_rejected)
    assert figures["rewards/chosen"] == pytest.approx(chosen_rewards.sum().item(), rel=1e-9)
    assert figures["rewards/rejected"] == pytest.approx(rejected_rewards.sum().item(), rel=1e-9)
    assert figures["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).sum().item(), rel=1e-9)
    assert figures["rewards/accuracies"] == (chosen_rewards > rejected_rewards).sum().item()
    assert objective.take_figures() == {}  # taken once


def test_dpo_learns_the_preference_and_logs_trl_names(align_base, tmp_path):
    out = tmp_path / "dpo"
    assert run(_argv(align_base, out, steps=12, eval_every=6)) == 0
    metrics = _metrics(out)
    start = next(line for line in metrics if line["step"] == 0 and "val_loss" in line)
    # Before any update the policy is the reference: every implicit reward is zero, the loss ln 2.
    assert start["val_loss"] == pytest.approx(0.693147, abs=1e-5)
    assert abs(start["val_rewards/margins"]) < 1e-5
    end = [line for line in metrics if "val_loss" in line][-1]
    assert end["step"] == 12 and end["val_loss"] < 0.6 and end["val_rewards/accuracies"] > 0.9 and end["val_rewards/margins"] > 0
    training = [line for line in metrics if "loss" in line]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(training[-1])
    assert training[-1]["rewards/margins"] == pytest.approx(training[-1]["rewards/chosen"] - training[-1]["rewards/rejected"])
    # The trained policy is a checkpoint like any other: it now prefers the chosen responses.
    policy, base = load_checkpoint(out), load_checkpoint(align_base / "base")
    batch = _pairs_batch(align_base).batch_of(range(6))
    with torch.no_grad():
        margin = (_direct_log_probs(policy, batch) - _direct_log_probs(base, batch)).double()
    chosen, rejected = margin.chunk(2)
    assert bool((chosen > rejected).all())


def test_lora_dpo_writes_an_adapter_every_command_reads(align_base, tmp_path):
    out = tmp_path / "lora"
    assert run(_argv(align_base, out, "--method", "lora", "--merge", "false", steps=3, lr=1e-2)) == 0
    assert (out / "adapter.json").is_file()
    model = load_finetuned(out)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_resume_gives_the_uninterrupted_losses(align_base, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run(_argv(align_base, whole, steps=6)) == 0
    assert run(_argv(align_base, resumed, steps=6)) == 0
    shutil.rmtree(resumed / "train" / "step-000006")  # as if killed after the step-3 checkpoint
    assert run([*_argv(align_base, resumed, steps=6), "--resume"]) == 0
    losses = [{line["step"]: line["loss"] for line in _metrics(out) if "loss" in line} for out in (whole, resumed)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_pairs_without_a_preference_are_dropped_and_counted(align_base, tmp_path, capsys):
    rows = [json.loads(line) for line in (align_base / "pairs.jsonl").read_text().splitlines()]
    rows[0]["rejected"] = rows[0]["chosen"]
    rows[1]["prompt"] = "Tell me about it. " * 40  # longer than the prompt budget: keeps its end
    rows[2]["chosen"], rows[2]["rejected"] = "x" * 5 + " one", "x" * 5 + " two"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = _argv(align_base, tmp_path / "out", steps=1, context_length=8)
    argv[argv.index("--data") + 1] = str(data)
    assert run([*argv, "--max-prompt-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "dropped 1 pair(s) whose chosen and rejected responses are identical" in err
    assert "prompt(s) were longer than --max-prompt-tokens and kept their last tokens" in err
    assert "response(s) were cut to fit the context length" in err


def test_tokenized_pairs_keep_the_prompts_end_and_train_only_responses(align_base):
    tokenizer = load_tokenizer(align_base / "tokenizer.json")
    examples, _ = read_preferences([align_base / "pairs.jsonl"])
    full, _ = tokenize_pairs(examples[:1], tokenizer, None, context_length=48)
    cut, report = tokenize_pairs(examples[:1], tokenizer, None, context_length=48, max_prompt_tokens=2)
    assert cut[0].prompt == full[0].prompt[-2:] and report.prompts_cut == 1
    assert full[0].chosen[-1] == tokenizer.eos_id
    batch = PairBatches(full, shuffle=False).batch_of([0])
    trained = batch["targets"][0][batch["targets"][0] != -100].tolist()
    assert trained == list(full[0].chosen)
    assert batch["last"][0].item() == len(full[0].prompt) + len(full[0].chosen) - 1


def test_chat_pairs_train_only_the_reply_and_its_end_of_turn(align_base, tmp_path, capsys):
    """llamafactory's conversations + chosen + rejected, rendered with ChatML (the checkpoint has no
    template; lmforge's tokenizers hold its markers): the trained tokens are the reply and <|im_end|>."""
    from lmforge.data.examples import CHATML_TEMPLATE

    rows = [{"conversations": [{"from": "human", "value": row["prompt"]}], "chosen": {"from": "gpt", "value": row["chosen"]},
             "rejected": {"from": "gpt", "value": row["rejected"]}}
            for row in map(json.loads, (align_base / "pairs.jsonl").read_text().splitlines())]
    data = tmp_path / "dpo_demo.json"
    data.write_text(json.dumps(rows))
    tokenizer = load_tokenizer(align_base / "tokenizer.json")
    examples, _ = read_preferences([data])
    pairs, _ = tokenize_pairs(examples[:1], tokenizer, CHATML_TEMPLATE, context_length=48)
    assert tokenizer.decode(list(pairs[0].prompt)).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(list(pairs[0].chosen)) == rows[0]["chosen"]["value"] + "<|im_end|>\n"
    argv = _argv(align_base, tmp_path / "out", steps=2)
    argv[argv.index("--data") + 1] = str(data)
    assert run(argv) == 0
    assert "chat template" in capsys.readouterr().err
    generation = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert generation["chat_template"] == CHATML_TEMPLATE
