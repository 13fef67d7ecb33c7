"""`lmforge eval ppl` end to end: text files and prepared splits, JSON and table output, bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from lmforge.cli import run
from lmforge.data.shards import ShardWriter, build_manifest, dtype_for_vocab, write_manifest
from lmforge.eval.perplexity import evaluate_perplexity
from lmforge.model.checkpoint import save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

CONTEXT = 8
TEXT = "Held-out text: ünïcödé, 中文.\nA second line.\n"
DOCUMENTS = ["The first validation document.", "A second one, a little longer than the first: ☃ ☃.", "Third."]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([TEXT, *DOCUMENTS] * 5, vocab_size=300)


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=CONTEXT)
    save_checkpoint(Transformer(config), root / "run", tokenizer=root / "tokenizer.json")
    return root / "run"


@pytest.fixture(scope="module")
def model(checkpoint):
    from lmforge.model.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("prepared")
    tokenizer.save(directory)
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    splits = {}
    for split, documents in (("train", DOCUMENTS[:1]), ("val", DOCUMENTS)):
        with ShardWriter(directory, split, dtype, eos_id=tokenizer.eos_id, shard_tokens=8) as writer:
            for document in documents:
                writer.add_document(tokenizer.encode(document))
        splits[split] = writer.shards
    write_manifest(directory, build_manifest(dtype=dtype, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, splits=splits))
    return directory


def eval_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert run(["eval", "ppl", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_file_equals_hand_computation(checkpoint, model, tokenizer, text_file, capsys):
    report = eval_json(capsys, str(checkpoint), "--data", str(text_file), "--device", "cpu")
    assert {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"} <= set(report)
    ids = [tokenizer.eos_id, *tokenizer.encode(TEXT)]  # EOS in front: the text's first token is scored
    assert len(ids) > 2 * CONTEXT
    nats = 0.0
    with torch.no_grad():
        for position in range(1, len(ids)):
            start = (position - 1) // CONTEXT * CONTEXT  # non-overlapping windows of CONTEXT targets
            logits = model(torch.tensor([ids[start:position]]))[0, -1]
            nats -= torch.log_softmax(logits.double(), dim=-1)[ids[position]].item()
    assert report["tokens"] == len(ids) - 1
    assert report["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]), rel=1e-9)
    assert report["bytes"] == len(TEXT.encode("utf-8"))
    assert report["bits_per_byte"] == pytest.approx(nats / (math.log(2) * len(TEXT.encode("utf-8"))), rel=1e-5)


def test_stride_and_context_options(checkpoint, model, tokenizer, text_file, capsys):
    report = eval_json(capsys, str(checkpoint), "--data", str(text_file), "--stride", "3", "--context-length", "6",
                       "--batch-size", "2", "--precision", "fp32")
    expected = evaluate_perplexity(model, np.asarray([tokenizer.eos_id, *tokenizer.encode(TEXT)]), 6, 3)
    assert report["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert (report["context_length"], report["stride"]) == (6, 3)


def test_prepared_split_decodes_bytes_with_its_tokenizer(checkpoint, model, tokenizer, prepared, capsys):
    report = eval_json(capsys, str(checkpoint), "--data", str(prepared), "--split", "val")
    stream = []
    for document in DOCUMENTS:
        stream += [*tokenizer.encode(document), tokenizer.eos_id]
    expected = evaluate_perplexity(model, np.asarray(stream), CONTEXT)
    assert report["tokens"] == len(stream) - 1
    assert report["loss"] == pytest.approx(expected.loss, rel=1e-6)
    # Scoring starts at the second token; EOS counts zero bytes.
    first = tokenizer.decode(stream[:1]).encode("utf-8")
    assert report["bytes"] == sum(len(document.encode("utf-8")) for document in DOCUMENTS) - len(first)


def test_max_tokens_scores_a_prefix(checkpoint, prepared, capsys):
    report = eval_json(capsys, str(checkpoint), "--data", str(prepared), "--max-tokens", "10")
    assert report["tokens"] == 10


def test_table_output(checkpoint, text_file, capsys):
    assert run(["eval", "ppl", str(checkpoint), "--data", str(text_file)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits per byte" in out and f"stride {CONTEXT}" in out


@pytest.mark.parametrize("case,message", [
    ("missing checkpoint", "does not exist"),
    ("missing data", "does not exist"),
    ("no such split", "no 'test' split"),
    ("empty text", "is empty"),
    ("stride 0", "stride 0"),
    ("stride over context", "stride 9"),
    ("context over model", "longer than the model's context"),
])
def test_bad_input_is_one_line_error(checkpoint, text_file, prepared, tmp_path, capsys, case, message):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    argv = {
        "missing checkpoint": [str(tmp_path / "nothing"), "--data", str(text_file)],
        "missing data": [str(checkpoint), "--data", str(tmp_path / "nothing.txt")],
        "no such split": [str(checkpoint), "--data", str(prepared), "--split", "test"],
        "empty text": [str(checkpoint), "--data", str(tmp_path / "empty.txt")],
        "stride 0": [str(checkpoint), "--data", str(text_file), "--stride", "0"],
        "stride over context": [str(checkpoint), "--data", str(text_file), "--stride", "9"],
        "context over model": [str(checkpoint), "--data", str(text_file), "--context-length", "9"],
    }[case]
    capsys.readouterr()
    assert run(["eval", "ppl", *argv]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lmforge: error:") and message in error[0]
