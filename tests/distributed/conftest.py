"""Launch `lmforge pretrain` (or any command) under torchrun on CPU (gloo), and the single-process
runs to compare with.

Every run trains the same tiny model on the same data for a few steps; the parallel runs split
the same global batch across processes, so their losses must match the single process's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"  # this checkout's package, whatever is installed
FAST = {"context_length": 32, "warmup_steps": 2, "lr": 3e-3, "eval_every": 0, "eval_batches": 2, "sample_tokens": 0,
        "precision": "fp32", "peak_flops": 1e12, "log_every": 1, "steps": 4, "save_every": 2}


class Runs:
    """Start runs into fresh directories and read what they logged."""

    def __init__(self, data: Path, root: Path) -> None:
        self.data, self.root = data, root

    def torchrun(self, processes: int, out: Path, model: str = "tiny-llama", resume: bool = False, **options) -> Path:
        """`options` are `train_x=...` and `parallel_x=...` keywords, passed as --train.x and --parallel.x."""
        return self._pretrain(processes, out, model, resume, options)

    def single(self, out: Path, model: str = "tiny-llama", resume: bool = False, **options) -> Path:
        return self._pretrain(None, out, model, resume, options)

    def _pretrain(self, processes: int | None, out: Path, model: str, resume: bool, options: dict) -> Path:
        argv = ["pretrain", "--model", model, "--data", str(self.data), "--out", str(out)]
        settings = {f"train.{key}": value for key, value in FAST.items()}
        settings.update({key.replace("_", ".", 1): value for key, value in options.items()})
        argv += [item for key, value in settings.items() for item in (f"--{key}", str(value))]
        argv += ["--resume"] if resume else []
        self.lmforge(argv, processes)
        return out

    def lmforge(self, argv: list[str], processes: int | None = None) -> None:
        """Run `lmforge ARGV` in one fresh process, or under torchrun on `processes`; it must succeed.
        Its stderr is kept in `last_stderr`."""
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes else []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, *launcher, "-m", "lmforge", *argv], env=env, capture_output=True, text=True,
                              timeout=240, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        self.last_stderr = done.stderr

    @staticmethod
    def logged(run: Path) -> dict[int, tuple[float, float]]:
        """step -> (loss, grad_norm) of every training line in metrics.jsonl."""
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {line["step"]: (line["loss"], line["grad_norm"]) for line in lines if "loss" in line}

    def assert_same_trajectory(self, run: Path, reference: Path, tolerance: float = 1e-5) -> None:
        """Losses and gradient norms equal at every step (fp32; only the order of sums differs):
        step 1 checks forward and backward, the later steps every update in between."""
        ours, theirs = self.logged(run), self.logged(reference)
        assert ours.keys() == theirs.keys() and ours
        for step, (loss, norm) in theirs.items():
            assert ours[step][0] == pytest.approx(loss, rel=tolerance), f"loss at step {step}"
            assert ours[step][1] == pytest.approx(norm, rel=tolerance), f"gradient norm at step {step}"

    def model_file(self, **fields) -> str:
        path = self.root / ("model-" + "-".join(f"{k}{v}" for k, v in fields.items()) + ".json")
        path.write_text(json.dumps({"preset": "tiny-llama", **fields}))
        return str(path)


@pytest.fixture(scope="session")
def runs(prepared_data, tmp_path_factory) -> Runs:
    return Runs(prepared_data, tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="session")
def single_run(runs, tmp_path_factory) -> Path:
    """One process, micro-batch 4: the reference for every layout with a global batch of 4."""
    return runs.single(tmp_path_factory.mktemp("single") / "run", train_micro_batch_size=4)


@pytest.fixture(scope="session")
def fsdp_run(runs, tmp_path_factory) -> Path:
    """Two processes with FSDP2, micro-batch 2 each: checkpoints at steps 2 and 4."""
    return runs.torchrun(2, tmp_path_factory.mktemp("fsdp") / "run", train_micro_batch_size=2, parallel_dp_shard=2)
