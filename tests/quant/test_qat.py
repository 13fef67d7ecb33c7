"""Quantization-aware training: the fake-quantized forward is the converted model's forward, its
gradient is the straight-through one, it starts at --qat-start-step, and `finetune --qat` ends in
a quantized checkpoint that computes what the trained model computed."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmforge.cli import run
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.peft import load_finetuned
from lmforge.quant.apply import quantize_model
from lmforge.quant.linear import QuantizedLinear
from lmforge.quant.qat import apply_qat, fake_quantize_inputs
from lmforge.quant.schemes import QuantScheme, dequantize, quantize

SCHEMES = [QuantScheme("int8"), QuantScheme("int4", 32), QuantScheme("int8", activations="int8")]


@pytest.mark.parametrize("scheme", SCHEMES, ids=["int8", "int4", "w8a8"])
def test_fake_quantized_forward_and_gradient(scheme):
    torch.manual_seed(0)
    model = Transformer(preset_config("tiny-llama"))
    tokens, targets = torch.randint(0, 500, (2, 16)), torch.randint(0, 500, (2, 16))
    reference = copy.deepcopy(model)  # carries the dequantized weights, plain layers
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.startswith("blocks.") and parameter.dim() == 2 and scheme.fits(parameter.shape[1]):
                parameter.copy_(dequantize(quantize(parameter, scheme)))
    if scheme.activations == "int8":  # and rounds each quantized layer's input as the kernel does
        for name, module in reference.named_modules():
            if name.startswith("blocks.") and isinstance(module, torch.nn.Linear) and scheme.fits(module.in_features):
                module.register_forward_pre_hook(lambda module, args: (fake_quantize_inputs(args[0]),))
    switch = apply_qat(model, scheme)
    converted = copy.deepcopy(model)
    quantize_model(converted, scheme)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), converted(tokens), atol=1e-5, rtol=1e-5)
    model(tokens, targets=targets).backward()
    reference(tokens, targets=targets).backward()
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-4, msg=name)  # straight through
    switch.at_step(2, start_step=5)  # before the start step: full precision
    plain = Transformer(model.config)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(tokens), plain(tokens))


@pytest.fixture(scope="module")
def base(tmp_path_factory, finetune_examples, make_random_checkpoint):
    root = tmp_path_factory.mktemp("qat")
    finetune_examples(root)
    texts = [f"What is {a} plus {b}? It is {a + b}." for a in range(12) for b in range(12)]
    return root, make_random_checkpoint(root, texts * 3, context_length=64)


def _finetune(base, out, *extra):
    root, checkpoint = base
    return run(["finetune", str(checkpoint), "--data", str(root / "alpaca.json"), "--out", str(out), *extra,
                "--train.steps", "4", "--train.micro_batch_size", "4", "--train.eval_every", "0", "--train.precision", "fp32",
                "--train.peak_flops", "1e12", "--train.save_every", "2", "--train.sample_tokens", "0"])


def test_finetune_qat_writes_the_quantized_checkpoint(base, tmp_path, capsys):
    assert _finetune(base, tmp_path / "qat", "--qat", "int4", "--qat-start-step", "1") == 0
    assert "quantization-aware training: int4 (groups of 32) from step 1" in capsys.readouterr().err
    config = json.loads((tmp_path / "qat" / "config.json").read_text())
    assert config["quantization"]["scheme"] == "int4"
    quantized = load_finetuned(tmp_path / "qat")
    assert isinstance(quantized.blocks[0].ffn.up_proj, QuantizedLinear)  # (down_proj: 176 inputs, not groups of 32)
    # The trained full-precision weights (the last training checkpoint) quantize to the same model.
    from safetensors.torch import load_file

    trained = Transformer(quantized.config)
    trained.load_state_dict(load_file(tmp_path / "qat" / "train" / "step-000004" / "model.safetensors"), strict=False)
    trained.tie_weights()
    quantize_model(trained, QuantScheme("int4", 32))
    tokens = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(quantized(tokens), trained(tokens), atol=1e-5, rtol=1e-5)


def test_finetune_w8a8_qat_writes_a_w8a8_checkpoint(base, tmp_path, capsys):
    assert _finetune(base, tmp_path / "qat", "--qat", "int8", "--qat-activations", "int8") == 0
    assert "quantization-aware training: int8 with int8 inputs (w8a8) from step 0" in capsys.readouterr().err
    config = json.loads((tmp_path / "qat" / "config.json").read_text())
    assert config["quantization"] == {"scheme": "int8", "activations": "int8", "output": False}
    quantized = load_finetuned(tmp_path / "qat")
    assert quantized.blocks[0].ffn.up_proj.scheme.activations == "int8"


def test_qat_needs_full_fine_tuning_and_qat_options_need_qat(base, tmp_path, capsys):
    assert _finetune(base, tmp_path / "lora", "--qat", "int8", "--method", "lora") == 1
    assert "use it with --method full" in capsys.readouterr().err
    assert _finetune(base, tmp_path / "lone", "--qat-start-step", "3") == 1
    assert "need --qat" in capsys.readouterr().err
    assert _finetune(base, tmp_path / "w4a8", "--qat", "int4", "--qat-activations", "int8") == 1
    assert "--qat-activations int8 goes with --qat int8 (w8a8), not --qat int4" in capsys.readouterr().err
