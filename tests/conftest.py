"""Shared fixtures: a small prepared-data directory built from real English prose that ships with
Python (standard-library documentation), so tests need no downloads."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

MODULES = ["argparse", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal", "email", "functools",
           "heapq", "http.client", "inspect", "itertools", "json", "logging", "os", "pathlib", "pickle", "random",
           "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "threading",
           "unittest", "urllib.parse", "uuid", "zipfile"]


def stdlib_documents() -> list[str]:
    """Module, class and function docstrings of the standard library: a few hundred KB of prose."""
    documents = []
    for name in MODULES:
        module = importlib.import_module(name)
        for _, member in [(name, module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(member) if (inspect.ismodule(member) or inspect.isclass(member) or inspect.isfunction(member)) else None
            if doc and len(doc) > 200 and doc not in documents:
                documents.append(doc)
    return documents


def build_prepared_data(directory: Path, vocab_size: int = 512, tokenizer_path: Path | None = None) -> Path:
    """The standard library's documentation, tokenized by a BPE trained on it (or by the tokenizer
    file at `tokenizer_path`), as a prepared-data directory with train and val splits."""
    from lmforge.data.shards import ShardWriter, build_manifest, dtype_for_vocab, write_manifest
    from lmforge.tokenizer import load_tokenizer, train_tokenizer

    documents = stdlib_documents()
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else train_tokenizer(documents, vocab_size=vocab_size)
    tokenizer.save(directory)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    splits = {}
    for split, docs in (("train", documents[20:]), ("val", documents[:20])):
        with ShardWriter(directory, split, dtype, eos_id=tokenizer.eos_id) as writer:
            for document in docs:
                writer.add_document(tokenizer.encode(document))
        splits[split] = writer.shards
    write_manifest(directory, build_manifest(dtype=dtype, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, splits=splits))
    return directory


def random_checkpoint(root: Path, texts: list[str], context_length: int, vocab_size: int = 300) -> Path:
    """A tiny-llama with random weights (seed 0) and a BPE trained on `texts`, saved as root/run."""
    import dataclasses

    import torch

    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=context_length)
    save_checkpoint(Transformer(config), root / "run", tokenizer=root / "tokenizer.json")
    return root / "run"


def write_finetune_examples(root: Path) -> None:
    """root/alpaca.json (answers of different lengths: every micro-batch holds another number of
    supervised tokens) and root/labels.jsonl (plus / minus questions), for fine-tuning tests."""
    import json

    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"It is {a + b}." + " Yes." * (a % 4)}
            for a in range(12) for b in range(12)]
    (root / "alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
    labelled = [{"text": f"What is {a} {operation} {b}?", "label": operation}
                for a in range(12) for b in range(12) for operation in ("plus", "minus")]
    (root / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labelled), encoding="utf-8")


@pytest.fixture(scope="session")
def finetune_examples():
    return write_finetune_examples


@pytest.fixture(scope="session")
def make_random_checkpoint():
    return random_checkpoint


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    return build_prepared_data(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session", autouse=True)
def decode_kernels_built():
    """lmforge's decode kernels compile on first use (about 25 s on a fresh machine, with a notice
    on stderr): once here, before any test times a command or reads its stderr."""
    from lmforge.quant import native

    native.kernels()
