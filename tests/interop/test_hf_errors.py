"""Bad Hugging Face directories fail with one clear line and leave nothing behind."""

from __future__ import annotations

import json
import shutil

import pytest

from lmforge.cli import main


def _run(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("lmforge: error:") and error.count("\n") == 1
    return error


def test_unsupported_architecture(hf_models, tmp_path, capsys):
    src = tmp_path / "bert"
    shutil.copytree(hf_models["llama-gqa"], src)
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "bert"
    (src / "config.json").write_text(json.dumps(config))
    error = _run(["convert", "from-hf", str(src), str(tmp_path / "out")], capsys)
    assert "model_type 'bert' is not supported" in error
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors(hf_models, tmp_path, capsys):
    src = tmp_path / "truncated"
    shutil.copytree(hf_models["qwen2"], src)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    error = _run(["convert", "from-hf", str(src), str(tmp_path / "out")], capsys)
    assert "model.safetensors: unreadable safetensors file" in error
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_kept(hf_models, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    error = _run(["convert", "from-hf", str(hf_models["gpt2"]), str(out)], capsys)
    assert "--overwrite" in error
    assert (out / "precious.txt").read_text() == "keep me"


def test_lmforge_checkpoint_rejects_hf_directory(hf_models, capsys):
    error = _run(["convert", "to-hf", str(hf_models["gpt2"]), "/tmp/never-written"], capsys)
    assert "convert from-hf" in error
