"""Bad model configurations fail with one clear line naming the field, from Python and the CLI."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.presets import load_model_config


def test_heads_must_divide_d_model():
    with pytest.raises(LmforgeError, match="n_heads=5 does not divide d_model=64"):
        ModelConfig(n_layers=1, d_model=64, n_heads=5, vocab_size=10, context_length=8)


def test_kv_heads_must_divide_heads():
    with pytest.raises(LmforgeError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        ModelConfig(n_layers=1, d_model=64, n_heads=4, n_kv_heads=3, vocab_size=10, context_length=8)


@pytest.mark.parametrize("fields, message", [
    (dict(layer_types=["local", "global"]), "must list one of global, local for each of the 3 layers"),
    (dict(layer_types=["local", "global", "sliding"], sliding_window=4), "holds 'sliding'"),
    (dict(layer_types=["local", "local", "global"]), "sliding_window is not set"),
    (dict(sliding_window=0), "'sliding_window' must be ≥ 1"),
    (dict(sliding_window=4, rope_scaling={"factor": 2.0, "kind": "linear"}), "rope_scaling applies to global layers"),
    (dict(rope_scaling={"factor": 2.0, "kind": "yarn"}), "'rope_scaling.kind' must be one of llama3, linear"),
    (dict(attention="mla", qk_norm=True, kv_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8),
     "qk_norm is for attention='mha'"),
])
def test_local_attention_fields_are_checked(fields, message):
    with pytest.raises(LmforgeError, match=message):
        ModelConfig(n_layers=3, d_model=64, n_heads=4, vocab_size=10, context_length=8, **fields)


def test_unknown_field_is_named(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny-llama\nn_layer: 3\n")
    with pytest.raises(LmforgeError, match=r"model.yaml: unknown field\(s\) n_layer"):
        load_model_config(path)


def test_yaml_preset_override(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("preset: tiny-llama\nn_layers: 3\nd_model: 96\nn_heads: 6\nn_kv_heads: 3\n")
    config = load_model_config(path)
    assert (config.n_layers, config.d_model, config.head_dim, config.vocab_size) == (3, 96, 16, 512)


@pytest.mark.parametrize("argv,message", [
    (["model", "info", "--preset", "gpt5"], "neither a preset nor an existing file"),
    (["model", "info"], "give exactly one of --preset NAME or --config FILE"),
])
def test_cli_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("lmforge: error:") and message in error


def test_cli_bad_config_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("n_layers: 2\nd_model: 64\nn_heads: 5\nvocab_size: 10\ncontext_length: 8\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "info", "--config", str(path)])
    assert exit_info.value.code == 1
    assert "n_heads=5 does not divide d_model=64" in capsys.readouterr().err
