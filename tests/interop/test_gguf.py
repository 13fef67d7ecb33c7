"""`convert to-gguf` / `from-gguf`: round trips, transformers' GGUF loader as a second reader, bad input.

Each architecture lmforge writes to GGUF is a small random lmforge checkpoint with its own BPE
tokenizer (`gguf_checkpoints`); the real gemma-3-270m file and llama.cpp are in
`test_gguf_reference.py` (slow).
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch

from lmforge.cli import run
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer

PROMPT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。 def f(x):\n    return x  # 42"

def _logits(directory, ids) -> torch.Tensor:
    with torch.no_grad():
        return load_checkpoint(directory).eval()(torch.tensor([ids]))[0]


def _ids(directory) -> list[int]:
    from lmforge.tokenizer import load_tokenizer

    return load_tokenizer(directory / "tokenizer.json").encode(PROMPT)[:40]


@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2", "gemma3", "gpt2"])
def test_f32_round_trip_gives_the_same_logits(name, gguf_checkpoints, tmp_path):
    source = gguf_checkpoints[name]
    assert run(["convert", "to-gguf", str(source), str(tmp_path / "m.gguf")]) == 0
    assert run(["convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back")]) == 0
    ids = _ids(source)
    expected, got = _logits(source, ids), _logits(tmp_path / "back", ids)
    if name == "gemma3":  # GGUF stores Gemma's norm weights as 1 + w: w comes back within one fp32 rounding
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    else:
        assert torch.equal(got, expected)
    assert (tmp_path / "back" / "tokenizer.json").read_text() and json.loads((tmp_path / "back" / "config.json").read_text())
    generation = json.loads((tmp_path / "back" / "generation.json").read_text())
    assert generation["chat_template"] == "{{ messages[0]['content'] }}"
    assert generation["stop_token_ids"][0] == json.loads((source / "generation.json").read_text())["stop_token_ids"][0]


@pytest.mark.parametrize("dtype, tolerance", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 2e-2)])
def test_smaller_types_stay_close(dtype, tolerance, gguf_checkpoints, tmp_path):
    source = gguf_checkpoints["llama"]
    assert run(["convert", "to-gguf", str(source), str(tmp_path / "m.gguf"), "--dtype", dtype]) == 0
    kinds = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norms stay f32
    assert kinds["blk.0.ffn_up.weight"] == {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    assert run(["convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back")]) == 0
    ids = _ids(source)
    expected, got = _logits(source, ids), _logits(tmp_path / "back", ids)
    relative = ((got - expected).abs().max() / expected.abs().max()).item()
    assert relative < tolerance, relative


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3", "gpt2"])
def test_transformers_gguf_loader_reads_the_export(name, gguf_checkpoints, tmp_path):
    transformers = pytest.importorskip("transformers")
    source = gguf_checkpoints[name]
    assert run(["convert", "to-gguf", str(source), str(tmp_path / "m.gguf")]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = _ids(source)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, _logits(source, ids), atol=1e-4, rtol=1e-4)


def test_from_gguf_bf16_halves_the_weights(gguf_checkpoints, tmp_path):
    assert run(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "m.gguf")]) == 0
    assert run(["convert", "from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--dtype", "bf16"]) == 0
    from safetensors import safe_open

    with safe_open(tmp_path / "back" / "model.safetensors", "pt") as file:
        assert {file.get_slice(key).get_dtype() for key in file.keys()} == {"BF16"}


def _error(argv, capsys) -> str:
    code = run(argv)
    stderr = capsys.readouterr().err
    assert code == 1 and "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("lmforge: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _write_gguf(path, architecture="llama", tensors=None, fields=None):
    writer = gguf.GGUFWriter(path, architecture)
    for key, value in (fields or {}).items():
        writer.add_uint32(key, value)
    for name, array in (tensors or {"token_embd.weight": np.zeros((8, 4), np.float32)}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_files_are_one_line_errors(gguf_checkpoints, tmp_path, capsys):
    (tmp_path / "text.gguf").write_text("not a model\n")
    assert "not a GGUF file" in _error(["convert", "from-gguf", str(tmp_path / "text.gguf"), str(tmp_path / "a")], capsys)
    assert run(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "m.gguf")]) == 0
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    assert "truncated or damaged" in _error(["convert", "from-gguf", str(tmp_path / "cut.gguf"), str(tmp_path / "b")], capsys)
    _write_gguf(tmp_path / "mamba.gguf", "mamba")
    assert "general.architecture 'mamba' is not supported" in _error(
        ["convert", "from-gguf", str(tmp_path / "mamba.gguf"), str(tmp_path / "c")], capsys)
    _write_gguf(tmp_path / "bare.gguf", "llama", fields={"llama.block_count": 1})
    assert "bare.gguf" in _error(["convert", "from-gguf", str(tmp_path / "bare.gguf"), str(tmp_path / "d")], capsys)
    assert "no such file" in _error(["convert", "from-gguf", str(tmp_path / "nothing.gguf"), str(tmp_path / "e")], capsys)
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_to_gguf_refuses_what_gguf_cannot_express_and_keeps_other_files(gguf_checkpoints, tmp_path, capsys):
    moe = tmp_path / "moe"
    save_checkpoint(Transformer(preset_config("tiny-mla-moe")), moe, tokenizer=gguf_checkpoints["llama"] / "tokenizer.json")
    assert "MLA or mixture-of-experts" in _error(["convert", "to-gguf", str(moe), str(tmp_path / "moe.gguf")], capsys)
    assert not (tmp_path / "moe.gguf").exists()
    (tmp_path / "notes.gguf").write_text("my notes\n")
    message = _error(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "notes.gguf"), "--overwrite"], capsys)
    assert "not a GGUF file" in message and (tmp_path / "notes.gguf").read_text() == "my notes\n"
    assert run(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "m.gguf")]) == 0
    assert "already exists" in _error(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "m.gguf")], capsys)
    assert run(["convert", "to-gguf", str(gguf_checkpoints["llama"]), str(tmp_path / "m.gguf"), "--overwrite"]) == 0
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(gguf_checkpoints["llama"], no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    assert "no tokenizer.json" in _error(["convert", "to-gguf", str(no_tokenizer), str(tmp_path / "x.gguf")], capsys)


def test_chat_template_travels_through_hugging_face_directories(gguf_checkpoints, tmp_path):
    source = gguf_checkpoints["llama"]
    template = json.loads((source / "generation.json").read_text())["chat_template"]
    assert run(["convert", "to-hf", str(source), str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == template
    assert run(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "generation.json").read_text())["chat_template"] == template


def test_a_type_the_gguf_package_cannot_dequantize_is_named(tmp_path):
    from types import SimpleNamespace

    from lmforge.errors import LmforgeError
    from lmforge.interop.gguf_file import _dequantize

    tensor = SimpleNamespace(name="blk.0.attn_q.weight", data=np.zeros((4, 36), np.uint8),
                             tensor_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(LmforgeError, match="m.gguf: tensor blk.0.attn_q.weight has type Q8_1, which the gguf package cannot"):
        _dequantize(tensor, tmp_path / "m.gguf")
