"""LoRA adapters in Hugging Face PEFT's layout: an lmforge adapter loaded by `peft.PeftModel` on the
transformers export of its base computes lmforge's logits, and a PEFT adapter converted with
from-peft computes PEFT's."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lmforge.commands.convert import from_peft, to_peft
from lmforge.errors import LmforgeError
from lmforge.interop.hf import to_hf
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint, write_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.peft import AdapterConfig, LoraConfig, apply_peft, base_state
from lmforge.peft.files import base_fingerprint, load_adapter, save_adapter
from lmforge.peft.lora import owns

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

VOCAB = 96
FAMILIES = {
    "llama": lambda: preset_config("tiny-llama"),
    "qwen2": lambda: dataclasses.replace(preset_config("tiny-llama"), qkv_bias=True),
    "gemma3": lambda: preset_config("tiny-gemma"),
}


def _base(root, family: str):
    """An lmforge checkpoint of a random tiny model (norms random too) and its transformers export."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(FAMILIES[family](), vocab_size=VOCAB, context_length=64))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.normal_(0.0, 0.3)
    save_checkpoint(model, root / "base")
    to_hf(root / "base", root / "base-hf")
    return root / "base", root / "base-hf"


def _hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def _randomize_lora(named_parameters, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in named_parameters:
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


TOKENS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(("family", "lora_config"), [
    ("llama", LoraConfig(r=4, alpha=8.0, targets="all-linear")),
    ("qwen2", LoraConfig(r=2, alpha=3.0, targets=("q_proj", "v_proj"), rslora=True)),
    ("gemma3", LoraConfig(r=4, alpha=16.0, targets=("o_proj", "gate_proj"))),
    ("llama", LoraConfig(r=3, alpha=6.0, targets=("blocks.1.attention.*", "blocks.0.ffn.down_proj"))),  # as a regex
])
def test_to_peft_loads_in_peft_with_same_logits(tmp_path, capsys, family, lora_config):
    base, base_hf = _base(tmp_path, family)
    model = load_checkpoint(base)
    fingerprint = base_fingerprint(model.config, base_state(model))
    write_checkpoint(model.config, base_state(model), tmp_path / "run")
    apply_peft(model, "lora", lora_config)
    _randomize_lora(model.named_parameters())
    save_adapter(model, tmp_path / "run", "lora", lora_config, fingerprint)

    to_peft(tmp_path / "run", tmp_path / "peft", base_model=str(base_hf))
    assert "wrote" in capsys.readouterr().out
    reference = peft.PeftModel.from_pretrained(_hf(base_hf), tmp_path / "peft").eval()
    with torch.no_grad():
        expected, actual = reference(TOKENS).logits, model.eval()(TOKENS)
        assert not torch.allclose(_hf(base_hf)(TOKENS).logits, expected, atol=1e-3)  # the adapter was applied
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual - expected).abs().max()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_from_peft_gives_peft_logits(tmp_path, family):
    base, base_hf = _base(tmp_path, family)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"],
                             use_rslora=True, task_type="CAUSAL_LM")
    reference = peft.get_peft_model(_hf(base_hf), config)
    _randomize_lora(reference.named_parameters())
    reference.save_pretrained(tmp_path / "peft")

    from_peft(tmp_path / "peft", tmp_path / "ours", base=base)
    ours = load_checkpoint(tmp_path / "ours")
    method, lora_config = load_adapter(ours, tmp_path / "ours")
    assert (method, lora_config.r, lora_config.scale) == ("lora", 4, 8.0)
    assert lora_config.targets == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
    with torch.no_grad():
        expected, actual = reference.eval()(TOKENS).logits, ours.eval()(TOKENS)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual - expected).abs().max()


def test_from_peft_keeps_partial_targets_exact(tmp_path):
    base, base_hf = _base(tmp_path, "llama")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], layers_to_transform=[1])
    peft.get_peft_model(_hf(base_hf), config).save_pretrained(tmp_path / "peft")
    from_peft(tmp_path / "peft", tmp_path / "ours", base=base)
    ours = load_checkpoint(tmp_path / "ours")
    _, lora_config = load_adapter(ours, tmp_path / "ours")
    assert lora_config.targets == ("blocks.1.attention.q_proj",)
    assert [name for name, _ in ours.named_parameters() if owns(name)] == [
        "blocks.1.attention.q_proj.lora_A.weight", "blocks.1.attention.q_proj.lora_B.weight"]


@pytest.mark.parametrize(("change", "message"), [
    ({"peft_type": "PREFIX_TUNING"}, "peft_type 'PREFIX_TUNING' is not supported"),
    ({"use_dora": True}, "'use_dora: true' is not supported .*DoRA"),
    ({"bias": "all"}, "'bias: \"all\"' is not supported"),
    ({"modules_to_save": ["lm_head"]}, "'modules_to_save: \\[\"lm_head\"\\]' is not supported"),
    ({"rank_pattern": {"q_proj": 8}}, "'rank_pattern: .*' is not supported .*per-module ranks"),
    ({"alpha_pattern": {"q_proj": 8}}, "per-module alphas"),
    ({"init_lora_weights": "pissa"}, "rewrote the base weights"),
    ({"r": 8}, r"lora_A\.weight has shape \(4, 64\), the lora config implies \(8, 64\)"),
])
def test_unsupported_peft_configs_are_refused(tmp_path, change, message):
    base, base_hf = _base(tmp_path, "llama")
    peft.get_peft_model(_hf(base_hf), peft.LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "peft")
    path = tmp_path / "peft" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(LmforgeError, match=message):
        from_peft(tmp_path / "peft", tmp_path / "ours", base=base)
    assert not (tmp_path / "ours").exists()


def test_lora_outside_the_blocks_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    base, base_hf = _base(tmp_path, "llama")
    peft.get_peft_model(_hf(base_hf), peft.LoraConfig(r=2, target_modules=["lm_head"])).save_pretrained(tmp_path / "peft")
    with pytest.raises(LmforgeError, match="tensor base_model.model.lm_head.base_layer.weight is not a LoRA matrix"):
        from_peft(tmp_path / "peft", tmp_path / "ours", base=base)
    path = tmp_path / "peft" / "adapter_model.safetensors"
    save_file({key: tensor for key, tensor in load_file(path).items() if "lora_" in key}, path)
    with pytest.raises(LmforgeError, match="adapts lm_head, which is not a linear layer of a llama block"):
        from_peft(tmp_path / "peft", tmp_path / "ours", base=base)


def test_to_peft_refusals(tmp_path):
    base, _ = _base(tmp_path, "llama")
    model = load_checkpoint(base)
    fingerprint = base_fingerprint(model.config, base_state(model))
    write_checkpoint(model.config, base_state(model), tmp_path / "adapter-run")
    apply_peft(model, "adapter", AdapterConfig(size=4))
    save_adapter(model, tmp_path / "adapter-run", "adapter", AdapterConfig(size=4), fingerprint)
    with pytest.raises(LmforgeError, match="method is adapter; only lora adapters"):
        to_peft(tmp_path / "adapter-run", tmp_path / "peft")
    with pytest.raises(LmforgeError, match="no adapter.json"):
        to_peft(base, tmp_path / "peft")

    torch.manual_seed(0)
    gpt2 = Transformer(dataclasses.replace(preset_config("tiny-gpt2"), vocab_size=VOCAB))
    write_checkpoint(gpt2.config, base_state(gpt2), tmp_path / "gpt2-run")
    apply_peft(gpt2, "lora", LoraConfig())
    save_adapter(gpt2, tmp_path / "gpt2-run", "lora", LoraConfig(), "0" * 64)
    with pytest.raises(LmforgeError, match="GPT-2 LoRA is not supported: Hugging Face fuses q, k and v"):
        to_peft(tmp_path / "gpt2-run", tmp_path / "peft")


def test_destination_rules(tmp_path, capsys):
    base, base_hf = _base(tmp_path, "llama")
    model = load_checkpoint(base)
    fingerprint = base_fingerprint(model.config, base_state(model))
    write_checkpoint(model.config, base_state(model), tmp_path / "run")
    apply_peft(model, "lora", LoraConfig())
    save_adapter(model, tmp_path / "run", "lora", LoraConfig(), fingerprint)
    to_peft(tmp_path / "run", tmp_path / "peft")
    with pytest.raises(LmforgeError, match="already exists; pass --overwrite"):
        to_peft(tmp_path / "run", tmp_path / "peft")
    to_peft(tmp_path / "run", tmp_path / "peft", overwrite=True)
    with pytest.raises(LmforgeError, match="is inside the source"):
        to_peft(tmp_path / "run", tmp_path / "run" / "peft")
    with pytest.raises(LmforgeError, match="is not a Hugging Face PEFT adapter directory"):
        to_peft(tmp_path / "run", base)

    from_peft(tmp_path / "peft", tmp_path / "back", base=base)
    from_peft(tmp_path / "peft", tmp_path / "back", base=base, overwrite=True)  # its own output: replaced
    with pytest.raises(LmforgeError, match="is not an lmforge checkpoint"):
        from_peft(tmp_path / "peft", base_hf, base=base, overwrite=True)
    with pytest.raises(LmforgeError, match="contains the source"):
        from_peft(tmp_path / "peft", tmp_path, base=base, overwrite=True)


def test_to_peft_warns_about_merged_weights(tmp_path, capsys):
    base, _ = _base(tmp_path, "llama")
    model = load_checkpoint(base)
    apply_peft(model, "lora", LoraConfig())
    write_checkpoint(model.config, {name: tensor + 1 for name, tensor in base_state(model).items()}, tmp_path / "run")
    save_adapter(model, tmp_path / "run", "lora", LoraConfig(), "0" * 64)
    to_peft(tmp_path / "run", tmp_path / "peft")
    assert "holds weights other than the adapter's base" in capsys.readouterr().err
