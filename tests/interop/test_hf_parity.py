"""lmforge models converted from Hugging Face compute the same logits, generate the same tokens,
and convert back to identical weights."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.interop.hf import from_hf, to_hf
from lmforge.model.checkpoint_directory import load_checkpoint, load_weights
from lmforge.infer.generate import generate_tokens

transformers = pytest.importorskip("transformers")

NAMES = ["gpt2", "llama-gqa", "llama3-scaled", "qwen2", "gemma3", "gemma3-scaled"]


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(hf_models, tmp_path, name):
    from_hf(hf_models[name], tmp_path / "ours")
    ours = load_checkpoint(tmp_path / "ours").eval()
    tokens = torch.randint(0, 96, (2, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _hf(hf_models[name])(tokens).logits
        actual = ours(tokens)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0), (actual - expected).abs().max()


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers(hf_models, tmp_path, name):
    from_hf(hf_models[name], tmp_path / "ours")
    ours = load_checkpoint(tmp_path / "ours").eval()
    prompt = [3, 17, 42, 8, 5]
    hf = _hf(hf_models[name])
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                           pad_token_id=0, min_new_tokens=20)[0, len(prompt):].tolist()
    assert list(generate_tokens(ours, prompt, max_new_tokens=20, temperature=0.0)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(hf_models, tmp_path, name):
    from_hf(hf_models[name], tmp_path / "ours")
    to_hf(tmp_path / "ours", tmp_path / "back")
    original, back = load_weights(hf_models[name]), load_weights(tmp_path / "back")
    assert set(original) == set(back)
    for key in original:
        assert torch.equal(original[key], back[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_in_transformers_with_same_logits(hf_models, tmp_path, name):
    from_hf(hf_models[name], tmp_path / "ours")
    to_hf(tmp_path / "ours", tmp_path / "exported")
    tokens = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(_hf(tmp_path / "exported")(tokens).logits, _hf(hf_models[name])(tokens).logits)


def test_transformers4_config_layout(hf_models, tmp_path):
    """Published checkpoints carry rope_theta / rope_scaling instead of rope_parameters."""
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(hf_models["llama3-scaled"], legacy)
    config = json.loads((legacy / "config.json").read_text())
    parameters = config.pop("rope_parameters")
    config["rope_theta"] = parameters.pop("rope_theta")
    config["rope_scaling"] = {**parameters, "type": parameters.pop("rope_type")}
    (legacy / "config.json").write_text(json.dumps(config))
    from_hf(legacy, tmp_path / "from-legacy")
    from_hf(hf_models["llama3-scaled"], tmp_path / "from-new")
    assert json.loads((tmp_path / "from-legacy" / "config.json").read_text()) == json.loads(
        (tmp_path / "from-new" / "config.json").read_text())


def test_sharded_checkpoint(hf_models, tmp_path):
    model = _hf(hf_models["llama-gqa"])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    from_hf(tmp_path / "sharded", tmp_path / "ours")
    tokens = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(tmp_path / "ours")(tokens), model(tokens).logits, atol=1e-4)


def test_gpt2_vocab_and_merges_become_tokenizer_json(hf_models, tmp_path):
    """A GPT-2 directory with vocab.json + merges.txt (no tokenizer.json) keeps its tokenizer."""
    import shutil

    from tokenizers import ByteLevelBPETokenizer

    from lmforge.tokenizer import load_tokenizer

    src = tmp_path / "gpt2-slow-tokenizer"
    shutil.copytree(hf_models["gpt2"], src)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(["hello world, hello there"] * 20, vocab_size=300, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(src))
    from_hf(src, tmp_path / "ours")
    ours, reference = load_tokenizer(tmp_path / "ours" / "tokenizer.json"), load_tokenizer(src)
    assert ours.encode("hello there world") == reference.encode("hello there world")
