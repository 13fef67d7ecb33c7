"""A tiny base model and preference pairs whose chosen response always has a property (it says
"good"), so a reward model or a DPO policy has something learnable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lmforge.model.checkpoint_directory import save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TOPICS = ["the sea", "a red fox", "the city", "old books", "rain", "tea", "the moon", "a small dog", "music", "bread",
          "the river", "winter", "a garden", "trains", "snow", "coffee"]


def pair_rows() -> list[dict]:
    rows = []
    for index, topic in enumerate(TOPICS * 4):
        adjective = ["nice", "calm", "bright", "warm"][index // len(TOPICS)]
        rows.append({"prompt": f"Tell me about {topic}.", "chosen": f"{topic.capitalize()} is good and {adjective}.",
                     "rejected": f"{topic.capitalize()} is bad{' and ' + adjective if index % 2 else ''}."})
    return rows


@pytest.fixture(scope="session")
def align_base(tmp_path_factory) -> Path:
    """`root/base`: a random tiny Llama-style checkpoint with its tokenizer; `root/pairs.jsonl`."""
    root = tmp_path_factory.mktemp("align")
    rows = pair_rows()
    texts = [row[key] for row in rows for key in ("prompt", "chosen", "rejected")]
    tokenizer = train_tokenizer(texts * 3, vocab_size=300)
    tokenizer.save(root)
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=48)
    save_checkpoint(Transformer(config), root / "base", tokenizer=root / "tokenizer.json")
    (root / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root
