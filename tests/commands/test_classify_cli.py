"""`lmforge classify` end to end on a tiny classification fine-tune: --text, --json, --file, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.commands.classify import classify
from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import load_checkpoint
from lmforge.train.objectives.classification import attach_head, save_classification_checkpoint

CONTEXT = 16
LABELS = ["bad", "good", "中性"]
TEXTS = ["A fine film.", "Terrible, just terrible.", "ok", "Das war großartig — 真好看！ I would see it again and again."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_random_checkpoint):
    """A random tiny-llama with a random (not zero: zero predicts uniform) three-label head."""
    root = tmp_path_factory.mktemp("classify")
    base = make_random_checkpoint(root, TEXTS * 5, CONTEXT)
    model = load_checkpoint(base)
    head = attach_head(model, LABELS)
    torch.manual_seed(1)
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
        head.bias.normal_(0, 0.1)
    save_classification_checkpoint(model, LABELS, root / "classifier", tokenizer=base / "tokenizer.json")
    return root / "classifier"


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\r\n".join(TEXTS) + "\r\n", encoding="utf-8")  # CRLF line ends, and a final one
    return path


def run_json(capsys, checkpoint, text):
    classify(checkpoint, text=text, json=True, device="cpu")
    return json.loads(capsys.readouterr().out)


def test_text_json(capsys, checkpoint):
    answer = run_json(capsys, checkpoint, TEXTS[0])
    assert set(answer) == {"label", "probabilities"}
    assert list(answer["probabilities"]) == LABELS
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)


def test_text_table(capsys, checkpoint):
    answer = run_json(capsys, checkpoint, TEXTS[1])
    classify(checkpoint, text=TEXTS[1], device="cpu")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"label: {answer['label']}"
    assert lines[1].split() == ["label", "probability"]
    table = {line.rsplit(maxsplit=1)[0].strip(): float(line.split()[-1]) for line in lines[2:]}
    assert table == {label: pytest.approx(p, abs=1e-4) for label, p in answer["probabilities"].items()}
    assert lines[2].startswith(answer["label"])  # most likely first


def test_file_equals_one_at_a_time(capsys, checkpoint, texts_file):
    classify(checkpoint, file=texts_file, batch_size=3, device="cpu")
    batched = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(batched) == len(TEXTS)
    for text, answer in zip(TEXTS, batched):
        alone = run_json(capsys, checkpoint, text)
        assert answer["label"] == alone["label"]
        assert answer["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)
    # The texts differ, so so do their answers: the lines are each text's, in order.
    assert len({json.dumps(answer["probabilities"]) for answer in batched}) == len(TEXTS)


def test_long_texts_keep_their_first_tokens(capsys, checkpoint, tmp_path):
    long = "word " * 40  # far more than 16 tokens
    cut = long[: len(long) // 2]  # still more than 16 tokens: the same first 16
    path = tmp_path / "long.txt"
    path.write_text(f"{long}\nshort\n{cut}\n", encoding="utf-8")
    classify(checkpoint, file=path, device="cpu")
    captured = capsys.readouterr()
    answers = [json.loads(line) for line in captured.out.splitlines()]
    assert "2 of 3 text(s) are longer than the model's context (16 tokens)" in captured.err
    assert answers[0] == answers[2]


@pytest.mark.parametrize("content, message", [
    (b"one\n\nthree\n", r"empty\.txt:2: empty line"),
    (b"", r"empty\.txt: no texts"),
    (b"fine\n\xff\xfe broken\n", r"empty\.txt:2: not UTF-8"),
])
def test_bad_files(checkpoint, tmp_path, content, message):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(LmforgeError, match=message):
        classify(checkpoint, file=path, device="cpu")


def test_bad_input(checkpoint, tmp_path):
    def refused(message, **options):
        with pytest.raises(LmforgeError, match=message) as error:
            classify(options.pop("where", checkpoint), device="cpu", **options)
        assert "\n" not in str(error.value)

    refused("exactly one of --text TEXT or --file FILE")
    refused("exactly one of", text="a", file=tmp_path / "x.txt")
    refused(r"--text: the text is empty", text="")
    refused("--batch-size", text="a", batch_size=0)
    refused("no such file", file=tmp_path / "missing.txt")
    refused("is a directory", file=tmp_path)
    refused("no such checkpoint directory", where=tmp_path / "nowhere", text="a")

    plain = tmp_path / "plain"
    shutil.copytree(checkpoint, plain)
    (plain / "classifier.json").unlink()
    refused("not a classification fine-tune.*run lmforge finetune --task classify", where=plain, text="a")

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(checkpoint, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    refused("no tokenizer.json", where=no_tokenizer, text="a")
