"""`lmforge finetune` on the one loop: the loss is the mean over the global batch's supervised
tokens (accumulation and data parallelism give one big batch's numbers, however uneven the masks),
packing changes nothing but speed, every method trains and writes a checkpoint the other commands
read, a killed run resumes to the same losses, and bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmforge.cli import run
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.peft import load_finetuned
from lmforge.tokenizer import load_tokenizer, train_tokenizer

FAST = {"micro_batch_size": 4, "warmup_steps": 1, "lr": 3e-3, "eval_every": 0, "eval_batches": 50, "sample_tokens": 0,
        "precision": "fp32", "peak_flops": 1e12, "log_every": 1, "save_every": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory, finetune_examples) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    texts = [f"What is {a} {operation} {b}? It is {a + b}." for a in range(12) for b in range(12) for operation in ("plus", "minus")]
    tokenizer = train_tokenizer(texts * 3, vocab_size=300)
    tokenizer.save(root)
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=64)
    save_checkpoint(Transformer(config), root / "base", tokenizer=root / "tokenizer.json")
    # Answers of different lengths: every micro-batch holds a different number of supervised tokens.
    finetune_examples(root)
    return root


def _argv(base: Path, out: Path, *extra: str, steps: int = 4, **train) -> list[str]:
    options = {**FAST, "steps": steps, **train}
    return ["finetune", str(base / "base"), "--data", str(base / "alpaca.json"), "--out", str(out), *extra,
            *[item for key, value in options.items() for item in (f"--train.{key}", str(value))]]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> dict[int, float]:
    return {line["step"]: line["loss"] for line in _metrics(out) if "loss" in line}


def _finetune(*argv: str) -> None:
    assert run(list(argv)) == 0


@pytest.mark.parametrize("pack", ["true", "false"])
def test_accumulated_micro_batches_equal_one_large_batch(base, tmp_path, pack):
    _finetune(*_argv(base, tmp_path / "one", "--pack", pack, micro_batch_size=8))
    _finetune(*_argv(base, tmp_path / "accumulated", "--pack", pack, micro_batch_size=2, grad_accum=4))
    one, accumulated = _losses(tmp_path / "one"), _losses(tmp_path / "accumulated")
    assert one.keys() == accumulated.keys() == {1, 2, 3, 4}
    for step in one:
        assert abs(one[step] - accumulated[step]) < 1e-5


def test_packing_gives_the_padded_losses(base, tmp_path):
    """Packed rows hide examples from each other: the validation loss before training is the same."""
    _finetune(*_argv(base, tmp_path / "packed", "--pack", "true", steps=1))
    _finetune(*_argv(base, tmp_path / "padded", "--pack", "false", steps=1))
    packed, padded = (next(line["val_loss"] for line in _metrics(tmp_path / name) if line["step"] == 0)
                      for name in ("packed", "padded"))
    assert packed == pytest.approx(padded, rel=1e-5)


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "prefix"])
def test_each_method_learns_and_writes_a_checkpoint(base, tmp_path, method, capsys):
    out = tmp_path / method
    _finetune(*_argv(base, out, "--method", method, "--prefix.length", "4", steps=12, lr=1e-2))
    losses = _losses(out)
    assert sum(losses[step] for step in (10, 11, 12)) / 3 < losses[1] - (0.3 if method == "full" else 0.15)
    model = load_checkpoint(out).eval()  # every later command reads it
    generation = json.loads((out / "generation.json").read_text())
    assert "<|im_start|>" in generation["chat_template"]
    assert load_tokenizer(out / "tokenizer.json").token_to_id("<|im_end|>") in generation["stop_token_ids"]
    assert model.config.vocab_size >= load_tokenizer(out / "tokenizer.json").vocab_size
    if method != "full":
        assert (out / "adapter.json").is_file() and (out / "adapter.safetensors").is_file()
        assert f"{method}:" in capsys.readouterr().err  # the trainable-parameter report
    # Every command loads a fine-tune with `load_finetuned`: unmerged adapters are applied.
    tokens = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        applied = torch.allclose(load_finetuned(out).eval()(tokens), model(tokens), atol=1e-6)
    assert applied == (method in ("full", "lora"))  # lora merged by default; adapters and prefixes are applied
    assert run(["generate", str(out), "--prompt", "What is 3 plus 4?", "--temperature", "0", "--max-new-tokens", "5"]) == 0


def test_lora_merged_weights_equal_the_adapter_on_the_base(base, tmp_path):
    from lmforge.peft import load_adapter

    out = tmp_path / "lora"
    _finetune(*_argv(base, out, "--method", "lora", "--lora.targets", "all-linear", steps=6, lr=1e-2))
    _finetune(*_argv(base, tmp_path / "unmerged", "--method", "lora", "--lora.targets", "all-linear", "--merge", "false",
                     steps=6, lr=1e-2))
    tokens = torch.tensor([[1, 5, 9, 30, 2]])
    merged = load_checkpoint(out).eval()
    adapted = load_checkpoint(tmp_path / "unmerged")  # the base weights, untouched
    load_adapter(adapted, tmp_path / "unmerged")
    with torch.no_grad():
        assert not torch.allclose(merged(tokens), load_checkpoint(tmp_path / "unmerged").eval()(tokens), atol=1e-3)
        torch.testing.assert_close(merged(tokens), adapted.eval()(tokens), atol=1e-5, rtol=1e-5)


def test_classification_learns_and_classify_reads_it(base, tmp_path, capsys):
    out = tmp_path / "classifier"
    argv = ["finetune", str(base / "base"), "--data", str(base / "labels.jsonl"), "--out", str(out), "--task", "classify",
            "--val-fraction", "0.2", *[item for key, value in {**FAST, "steps": 30, "lr": 1e-2, "eval_every": 30}.items()
                                        for item in (f"--train.{key}", str(value))]]
    _finetune(*argv)
    final = [line for line in _metrics(out) if "val_accuracy" in line][-1]
    assert final["val_accuracy"] > 0.7 and "val_macro_f1" in final and len(final["val_confusion"]) == 2
    capsys.readouterr()
    assert run(["classify", str(out), "--text", "What is 11 plus 10?", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer["probabilities"]) == {"minus", "plus"} and answer["label"] == "plus"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sigkill_then_resume_logs_the_same_losses(base, tmp_path, method):
    # Enough steps that the kill lands mid-run, however fast a step is.
    command = [sys.executable, "-m", "lmforge", *_argv(base, tmp_path / "x", "--method", method, steps=150)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_with_out(command, reference), check=True, env=_env(), capture_output=True)
    process = subprocess.Popen(_with_out(command, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "train" / "step-000006").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "train" / "step-000006").exists() and not (killed / "train" / "step-000150").exists()
    subprocess.run([*_with_out(command, killed), "--resume"], check=True, env=_env(), capture_output=True)
    assert _losses(killed) == _losses(reference)


def _with_out(command: list[str], out: Path) -> list[str]:
    index = command.index("--out")
    return [*command[:index + 1], str(out), *command[index + 2:]]


def test_chatml_tokens_are_added_and_their_rows_start_at_the_mean(base, tmp_path, capsys):
    """A base whose tokenizer lacks ChatML's markers: they are added, the vocabulary grows, reported."""
    root = tmp_path / "plain"
    tokenizer = train_tokenizer([f"What is {a} plus {b}?" for a in range(12) for b in range(12)] * 3, vocab_size=300,
                                special_tokens=["<|endoftext|>"])
    tokenizer.save(root)
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=64)
    save_checkpoint(Transformer(config), root / "base", tokenizer=root / "tokenizer.json")
    (root / "alpaca.json").write_bytes((base / "alpaca.json").read_bytes())
    _finetune(*_argv(root, tmp_path / "out", steps=1, lr=1e-9))
    assert f"vocabulary {tokenizer.vocab_size} → {tokenizer.vocab_size + 2}" in capsys.readouterr().err
    grown = load_checkpoint(tmp_path / "out")
    start = load_checkpoint(root / "base")
    assert grown.config.vocab_size == tokenizer.vocab_size + 2
    mean = start.token_embedding.weight.mean(dim=0)
    torch.testing.assert_close(grown.token_embedding.weight[-2:], mean.expand(2, -1), atol=1e-6, rtol=1e-4)
    assert load_tokenizer(tmp_path / "out" / "tokenizer.json").token_to_id("<|im_end|>") == tokenizer.vocab_size + 1


def test_an_earlier_run_is_not_touched_without_resume(base, tmp_path, capsys):
    out = tmp_path / "run"
    _finetune(*_argv(base, out, steps=3))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert run(_argv(base, out, steps=3)) == 1
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_label_seen_only_in_validation_is_an_error(base, tmp_path, capsys):
    from lmforge.data.examples import LabeledText, split_by_hash

    rows = [{"text": f"What is {a} plus {b}?", "label": "sum"} for a in range(12) for b in range(12)]
    lone = next(text for text in (f"What is {a} minus 1?" for a in range(100))  # one row, in the validation split
                if split_by_hash([LabeledText(text, "difference", "")], 0.2)[1])
    rows.append({"text": lone, "label": "difference"})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    code = run(["finetune", str(base / "base"), "--data", str(data), "--out", str(tmp_path / "out"), "--task", "classify",
                "--val-fraction", "0.2", "--train.steps", "1", "--train.precision", "fp32"])
    assert code == 1
    assert "label 'difference' occurs only in the validation split (1 row)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_untrained_turn_markers_start_from_the_mean_row(tmp_path, capsys):
    """A base whose vocabulary holds Gemma's turn markers but never trained them (their rows share
    one direction with many reserved tokens, as in gemma-3-270m's base checkpoint): the fine-tune
    says so, and its checkpoint holds those rows at the mean of the trained ones (LoRA, unmerged:
    the base written beside the adapter carries them) and the end-of-turn marker at the end-of-sequence
    token's row, the other rows as they were."""
    from lmforge.model.vocabulary import UNTRAINED_CLUSTER

    reserved = [f"<unused{index}>" for index in range(UNTRAINED_CLUSTER + 4)]
    tokenizer = train_tokenizer(["What is one plus one? It is two."] * 20, vocab_size=300,
                                special_tokens=["<eos>", "<start_of_turn>", "<end_of_turn>", *reserved])
    tokenizer.save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=64)
    model = Transformer(config)
    markers = [tokenizer.token_to_id(name) for name in ("<start_of_turn>", "<end_of_turn>", *reserved)]
    with torch.no_grad():
        model.token_embedding.weight[markers] = torch.randn(config.d_model) + 0.01 * torch.randn(len(markers), config.d_model)
    save_checkpoint(model, tmp_path / "base", tokenizer=tmp_path / "tokenizer.json")
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus one?"},
                          {"role": "assistant", "content": f"It is {a + 1}."}]} for a in range(30)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run(["finetune", str(tmp_path / "base"), "--data", str(tmp_path / "chat.jsonl"), "--out", str(tmp_path / "out"),
         "--method", "lora", "--merge", "false", "--train.steps", "1", "--train.sample_tokens", "0"])
    assert "<start_of_turn>, <end_of_turn> were never trained in this base model" in capsys.readouterr().err
    tuned = load_finetuned(tmp_path / "out").token_embedding.weight.detach()
    original = model.token_embedding.weight.detach()
    trained = [index for index in range(config.vocab_size) if index not in markers]
    torch.testing.assert_close(tuned[tokenizer.token_to_id("<start_of_turn>")], original[trained].mean(dim=0))
    assert tokenizer.eos_id == tokenizer.token_to_id("<eos>")
    assert torch.equal(tuned[tokenizer.token_to_id("<end_of_turn>")], original[tokenizer.eos_id])
    others = [index for index in range(config.vocab_size) if index not in markers[:2]]
    assert torch.equal(tuned[others], original[others])
