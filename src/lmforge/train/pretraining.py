"""The pretraining job: fresh weights, next-token prediction over the token windows of a
prepared-data directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmforge.data.loader import TokenWindows
from lmforge.data.shards import read_manifest
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.config import ParallelConfig, TrainConfig
from lmforge.train.job import TrainingJob
from lmforge.train.objectives import Batch
from lmforge.train.objectives.next_token import NextToken


class WindowBatches:
    """TokenWindows as a batch source: every target of a window is trained."""

    def __init__(self, windows: TokenWindows) -> None:
        self.windows = windows

    def next_batch(self, size: int) -> Batch:
        inputs, targets = self.windows.next_batch(size)
        return {"inputs": inputs, "targets": targets}

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.windows)


def prepare_model_config(config: ModelConfig, manifest: dict, context_length: int) -> ModelConfig:
    """Fit the model's vocabulary to the data's tokenizer, and check the context fits."""
    if config.vocab_size != manifest["vocab_size"]:
        config = dataclasses.replace(config, vocab_size=manifest["vocab_size"])
    if context_length > config.context_length:
        raise LmforgeError(
            f"--train.context_length {context_length} exceeds the model's context_length {config.context_length}"
        )
    return config


def pretraining_job(model_config: ModelConfig, data: Path, train: TrainConfig, parallel: ParallelConfig,
                    topology: Topology, verify: str) -> TrainingJob:
    from lmforge.distributed.mesh import check_layout
    from lmforge.tokenizer import load_tokenizer

    manifest = read_manifest(data)
    context_length = train.context_length or model_config.context_length
    model_config = prepare_model_config(model_config, manifest, context_length)
    check_layout(parallel, model_config, context_length, train.micro_batch_size)
    # Data-parallel rank r of W reads windows r, r+W, ... of the global order: one global batch is
    # micro_batch_size × grad_accum × W consecutive windows, however it is split.
    reading = {"rank": topology.dp_rank, "world_size": topology.dp_degree, "verify": verify, "vocab_size": model_config.vocab_size}
    train_windows = TokenWindows(data, "train", context_length=context_length, shuffle=True, seed=train.seed, **reading)
    has_val = "val" in manifest["splits"] and manifest["splits"]["val"]["tokens"] > context_length * topology.dp_degree
    val_windows = TokenWindows(data, "val", context_length=context_length, shuffle=False, **reading) if has_val else None
    tokenizer = load_tokenizer(data / "tokenizer.json")
    prompts = list(train.sample_prompts)
    if not prompts and val_windows is not None:  # the opening of a validation window
        prompts = [tokenizer.decode(val_windows.next_batch(1)[0][0, :8].tolist())]
    torch.manual_seed(train.seed)  # every rank builds the same weights, then keeps its share
    return TrainingJob(
        "pretrain", Transformer(model_config), model_config, NextToken(fused=parallel.tp == 1 and parallel.pp == 1),
        WindowBatches(train_windows), WindowBatches(val_windows) if val_windows is not None else None,
        data / "tokenizer.json", context_length,
        generation={"stop_token_ids": [tokenizer.eos_id] if tokenizer.eos_id is not None else []},
        identity={"model_config": model_config.to_dict()}, sample_prompts=prompts,
    )
