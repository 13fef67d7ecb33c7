"""`lmforge eval ppl` end to end: text files and prepared splits, JSON and table output, bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lmforge.cli import run
from lmforge.data.shards import ShardWriter, build_manifest, dtype_for_vocab, write_manifest
from lmforge.eval.perplexity import evaluate_perplexity
from lmforge.model.checkpoint_directory import save_checkpoint
from lmforge.tokenizer import load_tokenizer

CONTEXT = 8
TEXT = "Held-out text: ünïcödé, 中文.\nA second line.\n"
DOCUMENTS = ["The first validation document.", "A second one, a little longer than the first: ☃ ☃.", "Third."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_random_checkpoint):
    return make_random_checkpoint(tmp_path_factory.mktemp("eval"), [TEXT, *DOCUMENTS] * 5, CONTEXT)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return load_tokenizer(checkpoint / "tokenizer.json")


@pytest.fixture(scope="module")
def model(checkpoint):
    from lmforge.model.checkpoint_directory import load_checkpoint

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


def test_prepared_shards_are_verified_first(checkpoint, prepared, tmp_path, capsys):
    data = shutil.copytree(prepared, tmp_path / "data")
    shard = data / "val-00000.bin"
    np.fromfile(shard, dtype="<u2")[::-1].tofile(shard)  # same size, valid ids, in the wrong order
    capsys.readouterr()
    assert run(["eval", "ppl", str(checkpoint), "--data", str(data)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lmforge: error: shard") and "val-00000.bin does not match" in error[0]
    assert run(["eval", "ppl", str(checkpoint), "--data", str(data), "--verify", "off"]) == 0


def _strict_json(text: str) -> dict:
    """Parse as standard JSON, which has no NaN or Infinity (Python's json module accepts them)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _rigged_checkpoint(checkpoint, directory, rig) -> str:
    """A copy of the test checkpoint's model with `rig(model)` applied to its weights."""
    from lmforge.model.checkpoint_directory import load_checkpoint

    model = load_checkpoint(checkpoint)
    with torch.no_grad():
        rig(model)
    save_checkpoint(model, directory, tokenizer=checkpoint / "tokenizer.json")
    return str(directory)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_an_error_naming_the_checkpoint(checkpoint, text_file, tmp_path, capsys, value):
    broken = _rigged_checkpoint(checkpoint, tmp_path / "broken", lambda model: model.norm.weight.__setitem__(3, value))
    capsys.readouterr()
    assert run(["eval", "ppl", broken, "--data", str(text_file), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("lmforge: error: ")
    assert f"{broken}: tensor norm.weight holds NaN/inf" in captured.err


def test_an_overflowing_forward_pass_is_an_error(checkpoint, text_file, tmp_path, capsys):
    def rig(model):
        model.norm.weight.fill_(1e30)
        model.lm_head.weight.mul_(1e10)  # finite weights whose logits are not

    overflowing = _rigged_checkpoint(checkpoint, tmp_path / "overflowing", rig)
    capsys.readouterr()
    assert run(["eval", "ppl", overflowing, "--data", str(text_file), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "loss on" in captured.err and "is not finite" in captured.err


def test_json_is_standard_when_the_perplexity_overflows(checkpoint, text_file, tmp_path, capsys):
    confident = _rigged_checkpoint(checkpoint, tmp_path / "confident", lambda model: model.lm_head.weight.mul_(3000))
    capsys.readouterr()
    assert run(["eval", "ppl", confident, "--data", str(text_file), "--json"]) == 0
    report = _strict_json(capsys.readouterr().out)
    assert report["loss"] > 709 and report["perplexity"] is None  # e**709 is the largest float
