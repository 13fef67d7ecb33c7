"""LoRA on a quantized base (QLoRA-style): the integer layers stay frozen, gradients reach the LoRA
matrices through them, and training is what LoRA on the dequantized full-precision model would do."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lmforge.cli import run
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint
from lmforge.peft import load_finetuned
from lmforge.quant.linear import QuantizedLinear
from lmforge.quant.schemes import QuantScheme


@pytest.fixture(scope="module")
def base(tmp_path_factory, finetune_examples, make_random_checkpoint):
    root = tmp_path_factory.mktemp("qlora")
    finetune_examples(root)
    texts = [f"What is {a} plus {b}? It is {a + b}." for a in range(12) for b in range(12)]
    return root, make_random_checkpoint(root, texts * 3, context_length=64)


def _finetune(root, checkpoint, out, *extra):
    return run(["finetune", str(checkpoint), "--data", str(root / "alpaca.json"), "--out", str(out), "--method", "lora",
                "--lora.targets", "all-linear", "--lora.r", "4", *extra, "--train.steps", "4", "--train.micro_batch_size", "4",
                "--train.eval_every", "0", "--train.precision", "fp32", "--train.peak_flops", "1e12",
                "--train.save_every", "2", "--train.sample_tokens", "0", "--train.log_every", "1",
                "--train.lr", "1e-2"])


def _losses(out):
    return [line["loss"] for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in line]


def _dequantized_copy(quantized_dir, destination):
    """The quantized checkpoint as a plain fp32 one whose weights are exactly its dequantized codes."""
    model = load_finetuned(quantized_dir)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantizedLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight.data = child.dequantized_weight()
                if child.bias is not None:
                    plain.bias.data = child.bias.data.clone()
                setattr(parent, name, plain)
    del model.quantization
    save_checkpoint(model, destination, tokenizer=quantized_dir / "tokenizer.json")
    return destination


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_qlora_trains_as_lora_on_the_dequantized_model(base, tmp_path, scheme, capsys):
    root, checkpoint = base
    assert run(["quantize", str(checkpoint), str(tmp_path / "q"), "--scheme", scheme]) == 0
    plain = _dequantized_copy(tmp_path / "q", tmp_path / "dq")
    assert _finetune(root, tmp_path / "q", tmp_path / "qlora") == 0
    assert f"the base is quantized ({scheme})" in capsys.readouterr().err
    assert _finetune(root, plain, tmp_path / "lora", "--merge", "false") == 0

    torch.testing.assert_close(_losses(tmp_path / "qlora"), _losses(tmp_path / "lora"), atol=2e-5, rtol=0)
    assert _losses(tmp_path / "qlora")[-1] < _losses(tmp_path / "qlora")[0]

    # The checkpoint: the quantized base as it was, the adapter beside it, never merged into the codes.
    config = json.loads((tmp_path / "qlora" / "config.json").read_text())
    assert config["quantization"]["scheme"] == scheme
    assert json.loads((tmp_path / "qlora" / "adapter.json").read_text())["merged"] is False
    ours, reference = load_finetuned(tmp_path / "qlora"), load_finetuned(tmp_path / "lora")
    layer = ours.blocks[0].attention.q_proj
    assert isinstance(layer, QuantizedLinear) and layer.lora_B.weight.abs().sum() > 0  # trained
    original = load_finetuned(tmp_path / "q").blocks[0].attention.q_proj
    assert torch.equal(layer.codes, original.codes)  # frozen
    tokens = torch.randint(0, 200, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(ours(tokens), load_finetuned(tmp_path / "q")(tokens), atol=1e-4)


def test_a_quantized_base_is_not_fully_fine_tuned(base, tmp_path, capsys):
    root, checkpoint = base
    assert run(["quantize", str(checkpoint), str(tmp_path / "q"), "--scheme", "int8"]) == 0
    assert run(["finetune", str(tmp_path / "q"), "--data", str(root / "alpaca.json"), "--out", str(tmp_path / "full"),
                "--train.steps", "1"]) == 1
    error = capsys.readouterr().err
    assert "is quantized (int8)" in error and "--method lora" in error and "Traceback" not in error


def test_lora_on_a_quantized_layer_merges_by_requantizing(base):
    _, checkpoint = base
    from lmforge.peft.lora import LoraConfig, apply_lora, merge_lora
    from lmforge.quant.apply import quantize_model

    model = load_checkpoint(checkpoint)
    quantize_model(model, QuantScheme("int8"))
    apply_lora(model, LoraConfig(r=2, targets=("up_proj",)))
    layer = model.blocks[0].ffn.up_proj
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.1)
        expected = layer.dequantized_weight() + layer.lora_B.weight @ layer.lora_A.weight * layer.lora_update.scale
    merge_lora(model)
    assert not hasattr(layer, "lora_A")
    error = (layer.dequantized_weight() - expected).abs()
    assert error.max() <= layer.scales.max() / 2 + 1e-6  # within half a quantization step of the merged weight
