"""Weight-only quantization: quantize → dequantize error bounds per scheme, the integer kernels equal
the dequantized matmul, a quantized model's logits stay close to the full-precision model's, and a
quantized checkpoint round-trips and is read by the commands that decode."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lmforge.cli import run
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.quant.apply import load_quantized, quantize_model
from lmforge.quant.linear import QuantizedLinear
from lmforge.quant.schemes import QuantScheme, dequantize, fake_quantize, pack_int4, quantize, unpack_int4

SCHEMES = [QuantScheme("int8"), QuantScheme("int4", 32), QuantScheme("int4", 64, symmetric=True)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda scheme: f"{scheme.kind}-{scheme.group_size}-{scheme.symmetric}")
def test_dequantized_error_is_within_half_a_step(scheme):
    torch.manual_seed(0)
    weight = torch.randn(48, 256) * torch.rand(48, 1) * 3
    quantized = quantize(weight, scheme)
    error = (dequantize(quantized) - weight).abs()
    if scheme.kind == "int8":
        step = quantized.scales[:, None]
        assert quantized.codes.dtype == torch.int8 and quantized.codes.abs().max() <= 127
    else:
        step = quantized.scales.repeat_interleave(scheme.group_size, dim=1)
        assert 0 <= int(quantized.codes.min()) and int(quantized.codes.max()) <= 15
    assert bool((error <= step / 2 + 1e-6).all())
    assert torch.equal(unpack_int4(pack_int4(quantize(weight, SCHEMES[1]).codes)), quantize(weight, SCHEMES[1]).codes)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda scheme: f"{scheme.kind}-{scheme.group_size}-{scheme.symmetric}")
def test_integer_kernels_equal_the_dequantized_matmul(scheme):
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)  # tiles of the int4 kernel: outputs by 16, inputs by 32
    layer = QuantizedLinear.from_linear(linear, scheme)
    x = torch.randn(2, 3, 128)
    expected = x @ layer.dequantized_weight().t() + linear.bias
    assert layer._cpu_kernel(x.reshape(-1, 128)) is not None  # a decode-sized input takes the kernel
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    many = torch.randn(20, 128)  # a prompt's worth: the dequantized weight and a matmul (faster there)
    assert layer._cpu_kernel(many) is None
    torch.testing.assert_close(layer(many), many @ layer.dequantized_weight().t() + linear.bias, atol=1e-5, rtol=1e-5)


def test_fake_quantization_is_the_real_one_with_a_straight_through_gradient():
    torch.manual_seed(0)
    weight = torch.randn(16, 64, requires_grad=True)
    for scheme in SCHEMES:
        fake = fake_quantize(weight, scheme)
        assert torch.equal(fake.detach(), dequantize(quantize(weight, scheme)))
        (fake * torch.arange(64.0)).sum().backward()
        assert torch.equal(weight.grad, torch.arange(64.0).expand(16, 64))
        weight.grad = None


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma", "tiny-gpt2"])
@pytest.mark.parametrize("scheme", SCHEMES[:2], ids=["int8", "int4"])
def test_a_quantized_model_is_the_model_of_its_dequantized_weights(name, scheme):
    """Its logits equal (fp32 rounding) those of the full-precision model carrying the dequantized
    weights, and stay near the original's: relative error under 5 % (int8) / 40 % (int4) on these
    random models, whose layers amplify any perturbation."""
    torch.manual_seed(0)
    model = Transformer(preset_config(name)).eval()
    quantized, dequantized = Transformer(model.config).eval(), Transformer(model.config).eval()
    quantized.load_state_dict(model.state_dict())
    assert quantize_model(quantized, scheme) > 0
    state = model.state_dict()
    for module_name, module in quantized.named_modules():
        if isinstance(module, QuantizedLinear):
            state[f"{module_name}.weight"] = module.dequantized_weight()
    dequantized.load_state_dict(state)
    tokens = torch.randint(0, 500, (2, 24))
    with torch.no_grad():
        full, ours, reference = model(tokens), quantized(tokens), dequantized(tokens)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    assert float((ours - full).norm() / full.norm()) < (0.05 if scheme.kind == "int8" else 0.4)


def test_quantize_command_round_trips_and_decodes(tmp_path, make_random_checkpoint, capsys):
    checkpoint = make_random_checkpoint(tmp_path, ["The cat sat on the mat.", "A dog ran."] * 20, context_length=64)
    assert run(["quantize", str(checkpoint), str(tmp_path / "int4"), "--scheme", "int4", "--group-size", "32"]) == 0
    config = json.loads((tmp_path / "int4" / "config.json").read_text())
    assert config["quantization"] == {"scheme": "int4", "group_size": 32, "symmetric": False, "output": False}
    from lmforge.peft import load_finetuned

    loaded = load_finetuned(tmp_path / "int4")
    original = load_finetuned(checkpoint)
    quantize_model(original, QuantScheme("int4", 32))
    tokens = torch.randint(0, 200, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), original(tokens))
    assert isinstance(loaded.blocks[0].attention.q_proj, QuantizedLinear)
    assert run(["generate", str(tmp_path / "int4"), "--prompt", "The cat", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("The cat")
    assert run(["quantize", str(tmp_path / "int4"), str(tmp_path / "twice")]) == 1
    assert "quantized already" in capsys.readouterr().err
    assert run(["quantize", str(checkpoint), str(tmp_path / "odd"), "--scheme", "int4", "--group-size", "24"]) == 1
    assert "power of two" in capsys.readouterr().err
    loaded_directly = load_quantized(tmp_path / "int4")
    assert loaded_directly.quantization["scheme"] == "int4"


def test_a_tied_output_layer_gets_codes_of_its_own(tmp_path, make_random_checkpoint):
    """--output-layer on a tied model: the output layer is quantized, the embedding lookup is not;
    logits, losses and decoding read it through the save/load round trip."""
    import dataclasses

    from lmforge.model.checkpoint_directory import read_config, save_checkpoint
    from lmforge.peft import load_finetuned

    untied = make_random_checkpoint(tmp_path, ["The cat sat on the mat.", "A dog ran."] * 20, context_length=64)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tied"
    save_checkpoint(Transformer(dataclasses.replace(read_config(untied), tie_embeddings=True)), checkpoint,
                    tokenizer=untied / "tokenizer.json")
    original = load_finetuned(checkpoint)
    assert run(["quantize", str(checkpoint), str(tmp_path / "int8"), "--output-layer"]) == 0
    loaded = load_finetuned(tmp_path / "int8")
    assert isinstance(loaded.lm_head, QuantizedLinear) and isinstance(loaded.token_embedding.weight, nn.Parameter)
    assert torch.equal(loaded.token_embedding.weight, original.token_embedding.weight)
    reference = load_finetuned(checkpoint)
    quantize_model(reference, QuantScheme("int8"))
    reference.lm_head = nn.Linear(reference.config.d_model, reference.config.vocab_size, bias=False)
    reference.lm_head.weight.data = loaded.lm_head.dequantized_weight()
    tokens = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), reference(tokens), atol=1e-5, rtol=1e-5)
        targets = torch.randint(0, 200, (2, 16))
        torch.testing.assert_close(loaded(tokens, targets=targets), reference(tokens, targets=targets))
    assert run(["generate", str(tmp_path / "int8"), "--prompt", "The cat", "--max-new-tokens", "4", "--temperature", "0"]) == 0


def test_a_quantized_output_layer_serves_scoring_and_every_method(tmp_path, make_random_checkpoint):
    """A quantized output layer has codes and no weight: scoring (`eval tasks`), adapters, prefixes
    and a classification head find the model's device and dtype without it."""
    import copy

    from lmforge.eval.scoring import score_continuations
    from lmforge.peft import AdapterConfig, PrefixConfig, load_finetuned
    from lmforge.peft.adapters import apply_adapters
    from lmforge.peft.prefix import apply_prefix
    from lmforge.train.objectives.classification import attach_head

    checkpoint = make_random_checkpoint(tmp_path, ["The cat sat on the mat.", "A dog ran."] * 20, context_length=64)
    assert run(["quantize", str(checkpoint), str(tmp_path / "int8"), "--output-layer"]) == 0
    model = load_finetuned(tmp_path / "int8")
    assert isinstance(model.lm_head, QuantizedLinear)
    tokens = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        logits = model(tokens)[0].log_softmax(-1)
    [(score, _)] = score_continuations(model, [([5, 9, 14], [3, 7])], progress=False)
    assert score == pytest.approx(float(logits[2, 3] + logits[3, 7]), abs=1e-4)
    with_adapters = copy.deepcopy(model)
    apply_adapters(with_adapters, AdapterConfig())
    with torch.no_grad():  # the up-projections start at zero: the base model's function
        torch.testing.assert_close(with_adapters(tokens)[0].log_softmax(-1), logits)
    with_prefix = copy.deepcopy(model)
    apply_prefix(with_prefix, PrefixConfig(length=4))
    with torch.no_grad():
        assert with_prefix(tokens).shape == (1, 5, model.config.vocab_size)
    head = attach_head(copy.deepcopy(model), ["pos", "neg"])
    assert head.weight.device == model.token_embedding.weight.device


def test_w8a8_quantizes_inputs_on_the_fly_and_round_trips(tmp_path, make_random_checkpoint):
    """int8 weights with dynamic int8 inputs: each layer within a few % of the weight-only int8
    layer (the inputs' rounding), the model's logits near it, and the scheme kept through save/load."""
    torch.manual_seed(0)
    layer = nn.Linear(256, 96)
    weight_only = QuantizedLinear.from_linear(layer, QuantScheme("int8"))
    w8a8 = QuantizedLinear.from_linear(layer, QuantScheme("int8", activations="int8"))
    x = torch.randn(5, 256)
    exact, fast = weight_only(x), w8a8(x)
    assert not torch.equal(exact, fast)  # the inputs really were rounded
    assert float((fast - exact).norm() / exact.norm()) < 0.03
    with pytest.raises(Exception, match="goes with --scheme int8"):
        QuantScheme("int4", activations="int8")

    checkpoint = make_random_checkpoint(tmp_path, ["The cat sat on the mat.", "A dog ran."] * 20, context_length=64)
    assert run(["quantize", str(checkpoint), str(tmp_path / "w8a8"), "--activations", "int8"]) == 0
    assert json.loads((tmp_path / "w8a8" / "config.json").read_text())["quantization"]["activations"] == "int8"
    from lmforge.peft import load_finetuned

    loaded, reference = load_finetuned(tmp_path / "w8a8"), load_finetuned(checkpoint)
    assert loaded.blocks[0].attention.q_proj.scheme.activations == "int8"
    quantize_model(reference, QuantScheme("int8"))
    tokens = torch.randint(0, 200, (1, 16))
    with torch.no_grad():
        ours, theirs = loaded(tokens), reference(tokens)
    assert float((ours - theirs).norm() / theirs.norm()) < 0.1


def test_w8a8_layers_sharing_an_input_run_as_one_matmul():
    """q/k/v and gate/up of a w8a8 model are one integer matmul with the same numbers as the layers
    one by one; a LoRA hook on one of them, or new codes (`requantize_`), are not bypassed."""
    from lmforge.peft.lora import LoraConfig, apply_lora, merge_lora

    torch.manual_seed(0)
    model = Transformer(preset_config("tiny-llama")).eval()
    quantize_model(model, QuantScheme("int8", activations="int8"))
    attention, mlp = model.blocks[0].attention, model.blocks[0].ffn
    assert attention.fused_qkv is not None and mlp.fused_gate_up is not None
    x = torch.randn(2, 7, model.config.d_model)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(attention.fused_qkv(x), (attention.q_proj(x), attention.k_proj(x), attention.v_proj(x))))
        assert all(torch.equal(a, b) for a, b in zip(mlp.fused_gate_up(x), (mlp.gate_proj(x), mlp.up_proj(x))))
        tokens = torch.randint(0, 200, (1, 12))
        fused = model(tokens)
        apply_lora(model, LoraConfig(r=4, targets=("q_proj",)))
        attention.q_proj.lora_B.weight.normal_()
        adapted = model(tokens)
        assert not torch.allclose(adapted, fused)  # the LoRA update reached the output
        merge_lora(model)  # rounded into q_proj's codes
        merged = model(tokens)
        assert float((merged - adapted).norm() / adapted.norm()) < 0.05
        assert torch.equal(attention.fused_qkv(x)[0], attention.q_proj(x))  # the fused copy follows the new codes


def test_w8a8_rows_of_very_different_ranges_get_scales_of_their_own():
    """A row 100× the others (gemma's first token) does not take the others' input precision: each
    row stays within a few % of the full-precision product, where one scale for all would not."""
    torch.manual_seed(0)
    layer = nn.Linear(256, 64)
    w8a8 = QuantizedLinear.from_linear(layer, QuantScheme("int8", activations="int8"))
    x = torch.randn(8, 256)
    x[0] *= 100
    with torch.no_grad():
        exact, fast = layer(x), w8a8(x)  # 8 rows: lmforge's kernel where it is built, else fbgemm's
        handle, op = ((w8a8._native, torch.ops.lmforge_native.linear) if isinstance(w8a8._native, int)
                      else (w8a8._packed, torch.ops.lmforge.int8_dynamic_linear))
        one_scale = op(x, handle, 64) + layer.bias
    errors = (fast - exact).norm(dim=1) / exact.norm(dim=1)
    assert float(errors.max()) < 0.03
    assert float(((one_scale - exact).norm(dim=1) / exact.norm(dim=1))[1:].min()) > 0.1
    with torch.no_grad():  # each row as a decode step would compute it alone, in its group of rows
        assert torch.equal(fast[:1], w8a8(x[:1])) and torch.equal(fast[1:], w8a8(x[1:]))
