"""The training loop: it learns, resumes exactly after SIGKILL, survives damaged checkpoints,
accumulates gradients correctly, and stops cleanly on NaN and on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.model.presets import preset_config
from lmforge.train.config import TrainConfig
from lmforge.train.loop import run_training

FAST = dict(micro_batch_size=4, context_length=32, warmup_steps=2, lr=3e-3, eval_every=0, eval_batches=2,
            sample_tokens=0, precision="fp32", peak_flops=1e12, log_every=1)


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def _pretrain_command(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    options = {**FAST, "steps": steps, "save_every": 3}
    argv = [sys.executable, "-m", "lmforge", "pretrain", "--model", "tiny-llama", "--data", str(data), "--out", str(out)]
    argv += [item for key, value in options.items() for item in (f"--train.{key}", str(value))]
    return argv + list(extra)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_loss_falls_on_real_text(prepared_data, tmp_path):
    result = run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run",
                          TrainConfig(**{**FAST, "steps": 40, "eval_every": 20}))
    losses = _losses(tmp_path / "run")
    assert sum(losses[step] for step in range(36, 41)) / 5 < losses[1] - 0.6
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if "val_loss" in line]
    assert [e["step"] for e in evaluations] == [0, 20, 40]
    assert evaluations[-1]["val_loss"] < evaluations[0]["val_loss"] - 0.6
    assert result.val_loss == evaluations[-1]["val_loss"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation.json"):
        assert (tmp_path / "run" / name).is_file()


def test_sigkill_then_resume_logs_the_same_losses(prepared_data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_pretrain_command(prepared_data, reference, 12), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_pretrain_command(prepared_data, killed, 12), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "train" / "step-000006").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "train" / "step-000006").exists() and not (killed / "train" / "step-000012").exists()

    subprocess.run(_pretrain_command(prepared_data, killed, 12, "--resume"), check=True, env=_env(), capture_output=True)
    assert _losses(killed) == _losses(reference)  # bitwise: fp32, CPU, same thread count


def test_damaged_checkpoint_falls_back_to_the_previous(prepared_data, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_pretrain_command(prepared_data, reference, 9), check=True, env=_env(), capture_output=True)
    run = tmp_path / "run"
    subprocess.run(_pretrain_command(prepared_data, run, 6), check=True, env=_env(), capture_output=True)
    weights = run / "train" / "step-000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a torn write
    done = subprocess.run(_pretrain_command(prepared_data, run, 9, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "step-000006 is damaged" in done.stderr and "resumed from" in done.stderr and "step 3" in done.stderr
    assert _losses(run) == _losses(reference)


def test_accumulated_micro_batches_equal_one_large_batch(prepared_data, tmp_path):
    common = {**FAST, "steps": 3, "lr": 1e-3}
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "one", TrainConfig(**{**common, "micro_batch_size": 8}))
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "accumulated",
                 TrainConfig(**{**common, "micro_batch_size": 2, "grad_accum": 4}))
    one, accumulated = _losses(tmp_path / "one"), _losses(tmp_path / "accumulated")
    assert one.keys() == accumulated.keys()
    for step in one:
        assert abs(one[step] - accumulated[step]) < 1e-5


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"activation_checkpointing": "full"},
                                     {"activation_checkpointing": "selective", "schedule": "wsd"}])
def test_precision_and_checkpointing_paths_train(prepared_data, tmp_path, options):
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run", TrainConfig(**{**FAST, "steps": 3, **options}))
    assert len(_losses(tmp_path / "run")) == 3


def test_compiled_model_trains(prepared_data, tmp_path):
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run", TrainConfig(**{**FAST, "steps": 3, "compile": True}))
    assert len(_losses(tmp_path / "run")) == 3


def test_nan_loss_skips_then_stops(prepared_data, tmp_path, monkeypatch, capsys):
    import torch

    import lmforge.model.transformer as transformer

    monkeypatch.setattr(transformer, "linear_cross_entropy", lambda hidden, weight, targets: hidden.sum() * torch.tensor(float("nan")))
    with pytest.raises(LmforgeError, match="NaN/inf on 3 steps"):
        run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run",
                     TrainConfig(**{**FAST, "steps": 10, "max_bad_steps": 2}))
    assert capsys.readouterr().err.count("loss is nan; skipping this update") == 3


def test_sigterm_saves_a_checkpoint(prepared_data, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(_pretrain_command(prepared_data, run, 10_000), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "SIGTERM: saved a checkpoint" in stderr
    assert (run / "config.json").is_file() and any((run / "train").iterdir())


def test_existing_run_needs_resume(prepared_data, tmp_path):
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run", TrainConfig(**{**FAST, "steps": 1}))
    with pytest.raises(LmforgeError, match="pass --resume"):
        run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run", TrainConfig(**{**FAST, "steps": 1}))


def test_cli_rejects_a_parallel_layout_that_does_not_match(prepared_data, tmp_path, capsys):
    from lmforge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--model", "tiny-llama", "--data", str(prepared_data), "--out", str(tmp_path / "x"),
              "--parallel.dp_shard", "2"])
    assert exit_info.value.code == 1
    assert "multiply to 2" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def test_yaml_recipe_with_dotted_override(prepared_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: tiny-llama\ndata: {prepared_data}\nout: {tmp_path / 'run'}\n"
        "train:\n  steps: 50\n  micro_batch_size: 2\n  context_length: 32\n  precision: fp32\n  eval_every: 0\n"
        "  sample_tokens: 0\n  log_every: 1\n  peak_flops: 1.0e12\n"
    )
    from lmforge.cli import main

    main(["pretrain", "--config", str(recipe), "--train.steps", "2"])  # the option overrides the recipe
    assert sorted(_losses(tmp_path / "run")) == [1, 2]
    saved = json.loads(next((tmp_path / "run" / "train").glob("step-*/state.json")).read_text())
    assert saved["train_config"]["micro_batch_size"] == 2 and saved["train_config"]["steps"] == 2
