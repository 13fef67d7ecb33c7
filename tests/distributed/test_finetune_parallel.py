"""`lmforge finetune` under torchrun (two processes, gloo, CPU): DDP and FSDP2 follow one process's
per-step losses on the same global batch, however uneven the loss masks, packed or padded, for
full fine-tuning, LoRA and classification; rank 0 writes a checkpoint the other commands read; and
a run saved by two DDP ranks resumes exactly on one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.distributed

# Four steps on a global batch of four rows: one process reads micro-batches of 4, two read 2 each.
FAST = {"warmup_steps": 1, "lr": 3e-3, "eval_every": 0, "eval_batches": 50, "sample_tokens": 0, "precision": "fp32",
        "peak_flops": 1e12, "log_every": 1, "steps": 4, "save_every": 2}
LAYOUTS = {"single": [], "ddp": ["--parallel.dp_replicate", "2"], "fsdp": ["--parallel.dp_shard", "2"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory, make_random_checkpoint, finetune_examples) -> Path:
    """A tiny-llama checkpoint (base/run) with its tokenizer, Alpaca rows whose answers differ in
    length (so every micro-batch holds another number of supervised tokens) and labelled texts."""
    root = tmp_path_factory.mktemp("finetune-parallel")
    texts = [f"What is {a} {operation} {b}? It is {a + b}." for a in range(12) for b in range(12) for operation in ("plus", "minus")]
    make_random_checkpoint(root, texts * 3, context_length=64)
    finetune_examples(root)
    return root


class Finetunes:
    """Fine-tunes of the base checkpoint, each layout and setting run once for the module."""

    def __init__(self, runs, base: Path, root: Path) -> None:
        self.runs, self.base, self.root = runs, base, root
        self.done: dict[tuple[str, ...], Path] = {}

    def get(self, layout: str, task: str = "sft", method: str = "full", pack: str = "true") -> Path:
        key = (layout, task, method, pack)
        if key not in self.done:
            self.done[key] = self.start(self.root / "-".join(key), layout, task, method, pack)
        return self.done[key]

    def start(self, out: Path, layout: str, task: str = "sft", method: str = "full", pack: str = "true",
              resume: bool = False) -> Path:
        data = self.base / ("labels.jsonl" if task == "classify" else "alpaca.json")
        settings = {**FAST, "micro_batch_size": 4 if layout == "single" else 2}
        argv = ["finetune", str(self.base / "run"), "--data", str(data), "--out", str(out), "--task", task,
                "--method", method, "--pack", pack, *LAYOUTS[layout], *(["--resume"] if resume else []),
                *[item for key, value in settings.items() for item in (f"--train.{key}", str(value))]]
        self.runs.lmforge(argv, processes=None if layout == "single" else 2)
        return out


@pytest.fixture(scope="module")
def finetunes(runs, base, tmp_path_factory) -> Finetunes:
    return Finetunes(runs, base, tmp_path_factory.mktemp("finetunes"))


def _assert_close(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Equal weights but for rounding, which AdamW magnifies: a weight whose gradient is about zero
    still moves by m/√v (up to lr a step), so the bound is looser than the losses' 1e-5, yet far
    below the 1.2e-2 that four steps at lr 3e-3 move a weight."""
    assert ours.keys() == theirs.keys() and ours
    for name, tensor in theirs.items():
        assert (ours[name] - tensor).abs().max() < 1e-4, name


@pytest.mark.parametrize("pack", ["true", "false"])
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_data_parallel_fine_tuning_matches_one_process(finetunes, runs, layout, method, pack):
    # Each rank's summed loss is divided by the global batch's supervised tokens: uneven masks
    # across ranks give the single process's mean, not a mean of per-rank means.
    reference = finetunes.get("single", method=method, pack=pack)
    runs.assert_same_trajectory(finetunes.get(layout, method=method, pack=pack), reference)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_writes_the_single_process_checkpoint(finetunes, method):
    from lmforge.model.checkpoint_directory import load_checkpoint
    from lmforge.peft.files import read_adapter, read_adapter_state

    sharded, whole = finetunes.get("fsdp", method=method), finetunes.get("single", method=method)
    _assert_close(load_checkpoint(sharded).state_dict(), load_checkpoint(whole).state_dict())
    if method == "lora":
        assert read_adapter(sharded).method == "lora"
        _assert_close(read_adapter_state(sharded), read_adapter_state(whole))


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_classification_matches_one_process(finetunes, runs, layout):
    """The head runs after the model's forward, on its output: under FSDP2 it is its own unit."""
    from lmforge.train.objectives.classification import load_classification_checkpoint

    run, reference = finetunes.get(layout, task="classify"), finetunes.get("single", task="classify")
    # 5e-5: on CPUs without AVX-512 the two layouts' sums round apart by 1.3e-5 in step 4's norm
    # (AdamW magnifies it); a wrong normalisation would be off by a factor, not a fraction of 1e-4.
    runs.assert_same_trajectory(run, reference, tolerance=5e-5)
    (model, head, labels), (reference_model, reference_head, reference_labels) = map(load_classification_checkpoint, (run, reference))
    assert labels == reference_labels == ["minus", "plus"]
    _assert_close(head.state_dict(), reference_head.state_dict())
    _assert_close(model.state_dict(), reference_model.state_dict())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_saved_by_two_ddp_ranks_resumes_on_one_process(finetunes, runs, method, tmp_path):
    uninterrupted = finetunes.get("ddp", method=method)
    stopped = Path(shutil.copytree(uninterrupted, tmp_path / "stopped"))
    shutil.rmtree(stopped / "train" / "step-000004")  # as if stopped after its checkpoint at step 2
    finetunes.start(stopped, "single", method=method, resume=True)
    assert "dp_replicate 2 → 1" in runs.last_stderr
    assert f"resumed from {stopped / 'train' / 'step-000002'} at step 2" in runs.last_stderr
    lines = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    runs.assert_same_trajectory(stopped, uninterrupted)
    runs.assert_same_trajectory(stopped, finetunes.get("single", method=method))


@pytest.mark.parametrize("kind", ["dpo", "reward"])
@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_preference_training_matches_one_process(runs, base, tmp_path, layout, kind):
    """DPO's and the reward model's losses are sums over pairs divided by the global count: two
    ranks follow one process (DPO's reference values are computed on every rank alike)."""
    pairs = base / "pairs.jsonl"
    if not pairs.exists():
        rows = [{"prompt": f"What is {a} plus {b}?", "chosen": f" It is {a + b}.", "rejected": f" It is {a + b + 1 + a % 3}."}
                for a in range(6) for b in range(6)]
        pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    logged = {}
    for name in ("single", layout):
        settings = {**FAST, "micro_batch_size": 4 if name == "single" else 2}
        argv = ["align", kind, str(base / "run"), "--data", str(pairs), "--out", str(tmp_path / name), *LAYOUTS[name],
                *[item for key, value in settings.items() for item in (f"--train.{key}", str(value))]]
        runs.lmforge(argv, processes=None if name == "single" else 2)
        logged[name] = tmp_path / name
    runs.assert_same_trajectory(logged[layout], logged["single"])
