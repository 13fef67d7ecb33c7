"""The training loop: it learns, resumes exactly after SIGKILL, survives damaged checkpoints,
accumulates gradients correctly, follows the schedule, stops cleanly on NaN and on SIGTERM; fp32
activation checkpointing reproduces the plain losses exactly, bf16 autocast runs its matmuls in bf16
close to fp32, and the compiled model gives the eager losses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class _MatmulDtypes(TorchDispatchMode):
    """Counts the matrix products that reach the kernels, by dtype: what autocast casts shows here."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.dtypes[args[-1].dtype] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def fp32_run(prepared_data, tmp_path_factory) -> tuple[Path, Counter]:
    """The reference: three fp32 steps, eager, no activation checkpointing; and its matmuls' dtypes."""
    run = tmp_path_factory.mktemp("fp32") / "run"
    with _MatmulDtypes() as matmuls:
        run_training(preset_config("tiny-llama"), prepared_data, run, TrainConfig(**{**FAST, "steps": 3}))
    return run, matmuls.dtypes


def test_logged_learning_rates_follow_the_schedule(fp32_run):
    from lmforge.train.schedule import learning_rate

    lines = [json.loads(line) for line in (fp32_run[0] / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line["lr"] for line in lines if "lr" in line}
    config = TrainConfig(**{**FAST, "steps": 3})
    assert logged == {step: learning_rate(step - 1, config) for step in (1, 2, 3)}  # step s trains at rate s - 1


@pytest.mark.parametrize("checkpointing", ["full", "selective"])
def test_fp32_activation_checkpointing_reproduces_the_losses_exactly(prepared_data, tmp_path, fp32_run, checkpointing):
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run",
                 TrainConfig(**{**FAST, "steps": 3, "activation_checkpointing": checkpointing}))
    assert _losses(tmp_path / "run") == _losses(fp32_run[0])  # bitwise: recomputation reruns the same kernels


def test_bf16_runs_its_matmuls_in_bf16_and_stays_close_to_fp32(prepared_data, tmp_path, fp32_run):
    reference, reference_matmuls = fp32_run
    with _MatmulDtypes() as matmuls:
        run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run",
                     TrainConfig(**{**FAST, "steps": 3, "precision": "bf16"}))
    assert set(reference_matmuls) == {torch.float32} and set(matmuls.dtypes) == {torch.bfloat16}
    assert sum(matmuls.dtypes.values()) == sum(reference_matmuls.values())  # forward, backward and evaluation alike
    bf16, fp32 = _losses(tmp_path / "run"), _losses(reference)
    assert bf16.keys() == fp32.keys() and bf16 != fp32  # autocast changed the arithmetic...
    for step in fp32:  # ...but not the result: within 1e-3 of a loss near ln(512) ≈ 6.2 (measured: 6e-5)
        assert abs(bf16[step] - fp32[step]) < 1e-3, (step, bf16[step], fp32[step])


def test_compiled_model_gives_the_eager_losses(prepared_data, tmp_path, fp32_run):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh, so the counters below see this run's graphs
    counters.clear()
    run_training(preset_config("tiny-llama"), prepared_data, tmp_path / "run", TrainConfig(**{**FAST, "steps": 3, "compile": True}))
    assert counters["stats"]["unique_graphs"] > 0  # the model really ran compiled
    compiled, eager = _losses(tmp_path / "run"), _losses(fp32_run[0])
    assert compiled.keys() == eager.keys()
    for step in eager:  # inductor fuses and reorders fp32 sums: within 1e-4 (measured: one ulp, 5e-7)
        assert abs(compiled[step] - eager[step]) < 1e-4, (step, compiled[step], eager[step])


def test_nan_loss_skips_then_stops(prepared_data, tmp_path, monkeypatch, capsys):
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
