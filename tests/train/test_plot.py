"""`lmforge plot`: PNG curves from metrics.jsonl, tolerant of a torn last line and of re-logged steps."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("matplotlib")

from lmforge.cli import run  # noqa: E402
from lmforge.train.plot import metric_series, read_metrics  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def training_line(step: int) -> dict:
    warmup = min(1.0, step / 20)
    return {"step": step, "loss": 6.0 * math.exp(-step / 60) + 2.0, "lr": 3e-4 * warmup * math.cos(step / 400),
            "grad_norm": 1.0, "tokens_per_sec": 5000.0, "mfu": 0.1, "elapsed_s": step * 0.5}


def write_metrics(path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + tail, encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path):
    records = []
    for step in range(1, 201):
        records.append(training_line(step))
        if step % 50 == 0:
            records.append({"step": step, "val_loss": 6.0 * math.exp(-step / 60) + 2.3, "val_perplexity": 10.0})
    write_metrics(tmp_path / "metrics.jsonl", records)
    return tmp_path


def test_writes_valid_non_trivial_pngs(run_dir, capsys):
    assert run(["plot", str(run_dir)]) == 0
    for name in ("loss.png", "lr.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert str(run_dir / "loss.png") in capsys.readouterr().out
    assert not list(run_dir.glob(".*.tmp"))


def test_out_directory(run_dir, tmp_path):
    out = tmp_path / "figures" / "run"
    assert run(["plot", str(run_dir), "--out", str(out)]) == 0
    assert (out / "loss.png").read_bytes().startswith(PNG_MAGIC) and (out / "lr.png").is_file()
    assert not (run_dir / "loss.png").exists()


def test_torn_last_line_is_skipped_with_a_warning(run_dir, capsys):
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 201, "loss": 2.', encoding="utf-8")
    assert run(["plot", str(run_dir)]) == 0
    assert "torn last line" in capsys.readouterr().err
    assert (run_dir / "loss.png").read_bytes().startswith(PNG_MAGIC)
    assert read_metrics(metrics).torn_line == len(metrics.read_text().splitlines())


def test_damaged_line_in_the_middle_is_an_error(tmp_path, capsys):
    write_metrics(tmp_path / "metrics.jsonl", [training_line(1)], tail="not json\n" + json.dumps(training_line(2)) + "\n")
    assert run(["plot", str(tmp_path)]) == 1
    assert "metrics.jsonl:2" in capsys.readouterr().err


def test_repeated_steps_keep_the_last_value(tmp_path):
    records = [training_line(step) for step in (1, 2, 3)] + [{**training_line(2), "loss": 9.0}, training_line(4)]
    write_metrics(tmp_path / "metrics.jsonl", records)
    series = metric_series(read_metrics(tmp_path / "metrics.jsonl").records, "loss")
    assert series.steps == [1, 2, 3, 4] and series.values[1] == 9.0


@pytest.mark.parametrize("content", [None, "", "\n\n", '{"step": 1, "lo'])
def test_missing_or_empty_metrics_is_an_error(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content, encoding="utf-8")
    assert run(["plot", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lmforge: error:") and "metrics.jsonl" in error


def test_alignment_runs_get_their_figures_drawn(tmp_path, capsys):
    """PPO logs reward and kl, DPO the implicit rewards and accuracies: each gets its PNG; a
    pretraining run logs none of them and gets none."""
    ppo = [{**training_line(step), "reward": step / 10, "kl": step / 100} for step in range(1, 41)]
    dpo = [{**training_line(step), "rewards/chosen": 0.1 * step, "rewards/rejected": -0.1 * step,
            "rewards/margins": 0.2 * step, "rewards/accuracies": min(1.0, step / 20)} for step in range(1, 41)]
    dpo.append({"step": 40, "val_loss": 0.5, "val_rewards/margins": 3.0, "val_rewards/accuracies": 0.9})
    for name, records, expected in (("ppo", ppo, {"reward.png", "kl.png"}), ("dpo", dpo, {"rewards.png", "accuracy.png"}),
                                    ("pretrain", [training_line(step) for step in range(1, 41)], set())):
        (tmp_path / name).mkdir()
        write_metrics(tmp_path / name / "metrics.jsonl", records)
        assert run(["plot", str(tmp_path / name)]) == 0
        drawn = {path.name for path in (tmp_path / name).glob("*.png")} - {"loss.png", "lr.png"}
        assert drawn == expected, name
        for png in drawn:
            data = (tmp_path / name / png).read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 10_000
