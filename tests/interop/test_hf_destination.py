"""`convert --overwrite` replaces only an earlier output of the same conversion, never its source."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.cli import run
from lmforge.model.checkpoint_directory import save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer


def _snapshot(root) -> dict[str, bytes | str]:
    """Every path under `root` with its bytes (files) or its link target (symbolic links)."""
    snapshot: dict[str, bytes | str] = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                snapshot[relative] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                snapshot[relative] = open(path, "rb").read()
            else:
                snapshot[relative] = "dir"
    return snapshot


@pytest.fixture
def runs(tmp_path):
    """runs/model: a checkpoint with its training state, beside an unrelated file."""
    torch.manual_seed(0)
    save_checkpoint(Transformer(preset_config("tiny-llama")), tmp_path / "runs" / "model", generation={"stop_token_ids": [0]})
    (tmp_path / "runs" / "model" / "train" / "step-10").mkdir(parents=True)
    (tmp_path / "runs" / "model" / "train" / "step-10" / "state.json").write_text('{"step": 10}')
    (tmp_path / "runs" / "notes.txt").write_text("unrelated")
    return tmp_path / "runs"


def _refused(argv, capsys) -> str:
    assert run(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("lmforge: error: ") and error.count("\n") == 1 and "Traceback" not in error
    return error


@pytest.mark.parametrize("destination,relation", [
    ("runs", "contains"), ("runs/model", "is"), ("runs/model/sub", "is inside"), ("runs/model/train", "is inside"),
])
def test_to_hf_refuses_a_destination_overlapping_its_source(runs, capsys, destination, relation):
    before = _snapshot(runs.parent)
    error = _refused(["convert", "to-hf", str(runs / "model"), str(runs.parent / destination), "--overwrite"], capsys)
    assert f"{relation} the source" in error
    assert _snapshot(runs.parent) == before


def test_a_symbolic_link_does_not_hide_the_source(runs, capsys):
    (runs.parent / "alias").symlink_to(runs / "model")
    before = _snapshot(runs.parent)
    error = _refused(["convert", "to-hf", str(runs / "model"), str(runs.parent / "alias"), "--overwrite"], capsys)
    assert "is the source" in error
    _refused(["convert", "to-hf", str(runs.parent / "alias"), str(runs), "--overwrite"], capsys)
    assert _snapshot(runs.parent) == before


def test_from_hf_refuses_a_destination_overlapping_its_source(hf_models, tmp_path, capsys):
    source = tmp_path / "hf"
    assert run(["convert", "from-hf", str(hf_models["llama-gqa"]), str(tmp_path / "checkpoint")]) == 0
    assert run(["convert", "to-hf", str(tmp_path / "checkpoint"), str(source)]) == 0
    before = _snapshot(tmp_path)
    for destination in (source, tmp_path, source / "lmforge"):
        assert "the source" in _refused(["convert", "from-hf", str(source), str(destination), "--overwrite"], capsys)
    assert _snapshot(tmp_path) == before


def test_overwrite_refuses_a_directory_it_did_not_write(hf_models, runs, tmp_path, capsys):
    unrelated = tmp_path / "mine"
    unrelated.mkdir()
    (unrelated / "config.json").write_text('{"model_type": "llama"}')
    (unrelated / "thesis.tex").write_text("years of work")
    before = _snapshot(tmp_path)
    cases = [
        (["to-hf", str(runs / "model"), str(unrelated)], "(it holds 'thesis.tex')"),
        (["from-hf", str(hf_models["gpt2"]), str(unrelated)], "(it holds 'thesis.tex')"),
        (["from-hf", str(hf_models["gpt2"]), str(runs / "model")], "(it holds 'train')"),  # a run, with its state
        (["from-hf", str(hf_models["gpt2"]), str(runs)], "(it holds 'model')"),
    ]
    for argv, holds in cases:
        error = _refused(["convert", *argv, "--overwrite"], capsys)
        assert holds in error and "refusing to replace it" in error
    assert _snapshot(tmp_path) == before


def test_to_hf_does_not_replace_an_lmforge_checkpoint(runs, tmp_path, capsys):
    other = tmp_path / "other"
    torch.manual_seed(1)
    save_checkpoint(Transformer(preset_config("tiny-llama")), other)
    before = _snapshot(other)
    error = _refused(["convert", "to-hf", str(runs / "model"), str(other), "--overwrite"], capsys)
    assert "is not a Hugging Face model directory" in error
    assert _snapshot(other) == before


def test_overwrite_replaces_an_earlier_output(runs, tmp_path, capsys):
    out = tmp_path / "hf"
    assert run(["convert", "to-hf", str(runs / "model"), str(out)]) == 0
    first = _snapshot(out)
    error = _refused(["convert", "to-hf", str(runs / "model"), str(out)], capsys)
    assert "--overwrite" in error
    (out / "model.safetensors").write_bytes(b"stale")
    assert run(["convert", "to-hf", str(runs / "model"), str(out), "--overwrite"]) == 0
    assert _snapshot(out) == first
    assert run(["convert", "from-hf", str(out), str(tmp_path / "back")]) == 0
    assert run(["convert", "from-hf", str(out), str(tmp_path / "back"), "--overwrite"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["back", "hf", "runs"]  # no temporary left behind


def test_an_empty_or_missing_destination_needs_no_overwrite(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    assert run(["convert", "to-hf", str(runs / "model"), str(tmp_path / "empty")]) == 0
    assert run(["convert", "to-hf", str(runs / "model"), str(tmp_path / "new" / "hf")]) == 0


def test_a_destination_that_is_a_file_or_a_link_is_refused(runs, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert "is not a directory" in _refused(["convert", "to-hf", str(runs / "model"), str(tmp_path / "file")], capsys)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert "symbolic link" in _refused(["convert", "to-hf", str(runs / "model"), str(tmp_path / "link")], capsys)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "file").read_text() == "not a directory"
