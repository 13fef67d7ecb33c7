"""`lmforge pretrain`: train a model from a prepared-data directory into a checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lmforge.train.config import ParallelConfig, TrainConfig


def pretrain(
    *,
    model: str,
    data: Path,
    out: Path,
    resume: bool = False,
    verify: Literal["sample", "full", "off"] = "sample",
    train: TrainConfig = TrainConfig(),
    parallel: ParallelConfig = ParallelConfig(),
) -> None:
    """Pretrain a transformer on the token shards of `lmforge prepare`, writing a checkpoint
    directory (config.json, model.safetensors, tokenizer.json, metrics.jsonl, train/).

    Example:
        lmforge pretrain --model small --data data/ --out runs/small --train.steps 2000
        lmforge pretrain --config configs/pretrain/small.yaml --train.lr 1e-3
        lmforge pretrain --model my_model.yaml --data data/ --out runs/x --resume
        torchrun --nproc-per-node 2 -m lmforge pretrain --model small --data data/ --out runs/ddp --parallel.dp_replicate 2

    Args:
        model: A preset name (small, gpt2, llama-3.2-1b, ...) or a YAML/JSON file of ModelConfig fields.
        data: A prepared-data directory (manifest.json, train-*.bin, val-*.bin, tokenizer.json).
        out: The run directory: checkpoints, metrics.jsonl, TensorBoard events.
        resume: Continue the run in --out from its newest intact checkpoint.
        verify: How the shards are checked against manifest.json before use: sample (sizes, the manifest's
            checksum, 8 hashed 1 MiB blocks per shard), full (every byte hashed), off (sizes only). Every mode
            checks the token ids against the model's vocabulary.
        train: Optimisation, precision, schedule, evaluation and checkpoint settings.
        parallel: Degrees of data, tensor and pipeline parallelism (their product = processes).
    """
    import sys

    from lmforge.model.presets import load_model_config
    from lmforge.train.launch import launch_training

    config = load_model_config(model)
    result = launch_training(config, data, out, train, parallel, resume, verify)
    if result is not None:
        val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"trained to step {result.step}{val}; checkpoint in {result.out}", file=sys.stderr)
