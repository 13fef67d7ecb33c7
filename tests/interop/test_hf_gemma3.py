"""Gemma 3 specifics of `convert from-hf` / `to-hf` beyond the shared parity tests: both config
layouts, the text model of a multimodal checkpoint, transformers' defaults, and what is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.interop.hf import from_hf, to_hf
from lmforge.interop.hf_config import GEMMA3_DEFAULTS, GEMMA3_SLIDING_WINDOW_PATTERN, config_from_hf, hf_model_type
from lmforge.model.checkpoint_directory import load_checkpoint, read_config
from lmforge.model.presets import preset_config

transformers = pytest.importorskip("transformers")


def _rewrite(src, dst, change):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    change(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("name", ["gemma3", "gemma3-scaled"])
def test_transformers4_config_layout(hf_models, tmp_path, name):
    """Published Gemma 3 configs carry rope_theta, rope_local_base_freq, rope_scaling and (1B)
    sliding_window_pattern instead of rope_parameters and layer_types."""
    def legacy(config):
        parameters = config.pop("rope_parameters")
        config["rope_theta"] = parameters["full_attention"].pop("rope_theta")
        config["rope_local_base_freq"] = parameters["sliding_attention"]["rope_theta"]
        scaling = parameters["full_attention"]
        config["rope_scaling"] = None if scaling["rope_type"] == "default" else scaling
        if name == "gemma3":
            del config["layer_types"]

    from_hf(_rewrite(hf_models[name], tmp_path / "legacy", legacy), tmp_path / "from-legacy")
    from_hf(hf_models[name], tmp_path / "from-new")
    assert read_config(tmp_path / "from-legacy") == read_config(tmp_path / "from-new")


def test_multimodal_checkpoint_converts_its_text_model(hf_models, tmp_path):
    from_hf(hf_models["gemma3-multimodal"], tmp_path / "ours")
    ours = load_checkpoint(tmp_path / "ours").eval()
    reference = transformers.Gemma3ForConditionalGeneration.from_pretrained(hf_models["gemma3-multimodal"]).eval()
    tokens = torch.randint(0, 90, (2, 40), generator=torch.Generator().manual_seed(4))  # no image tokens
    with torch.no_grad():
        assert torch.allclose(ours(tokens), reference(tokens).logits, atol=1e-4, rtol=0)
    to_hf(tmp_path / "ours", tmp_path / "text-only")
    assert json.loads((tmp_path / "text-only" / "config.json").read_text())["model_type"] == "gemma3_text"


def test_defaults_are_transformers_own():
    """A config.json may leave out what Gemma3TextConfig defaults; lmforge fills in the same values."""
    theirs = transformers.Gemma3TextConfig()
    for key, value in GEMMA3_DEFAULTS.items():
        if key == "rope_theta":
            assert theirs.rope_parameters["full_attention"]["rope_theta"] == value
        elif key == "rope_local_base_freq":
            assert theirs.rope_parameters["sliding_attention"]["rope_theta"] == value
        else:
            assert getattr(theirs, key) == value, key
    pattern = [(layer + 1) % GEMMA3_SLIDING_WINDOW_PATTERN == 0 for layer in range(theirs.num_hidden_layers)]
    assert [kind == "full_attention" for kind in theirs.layer_types] == pattern


@pytest.mark.parametrize("preset", ["gemma-3-270m", "gemma-3-1b"])
def test_presets_are_the_published_shapes(preset):
    """Built from the values Hugging Face's configs for these models hold, HF counts the same parameters."""
    config = preset_config(preset)
    hf = transformers.Gemma3TextConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim, query_pre_attn_scalar=256, sliding_window=512, sliding_window_pattern=6,
        rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, max_position_embeddings=32768, rms_norm_eps=1e-6)
    assert config_from_hf({**hf.to_dict(), "model_type": "gemma3_text"}, "config.json") == config
    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(hf)
    from lmforge.model.accounting import model_cost

    assert model_cost(config).parameters == sum(p.numel() for p in model.parameters())
    assert hf_model_type(config) == "gemma3_text"


@pytest.mark.parametrize("field, value, message", [
    ("final_logit_softcapping", 30.0, "'final_logit_softcapping: 30.0' is not supported"),
    ("attn_logit_softcapping", 50.0, "'attn_logit_softcapping: 50.0' is not supported"),
    ("use_bidirectional_attention", True, "'use_bidirectional_attention: true' is not supported"),
    ("hidden_activation", "gelu", "hidden_activation 'gelu' is not supported"),
    ("layer_types", ["chunked_attention"] * 4, "layer_types chunked_attention not supported"),
])
def test_what_gemma3_conversion_refuses(hf_models, field, value, message):
    config = json.loads((hf_models["gemma3"] / "config.json").read_text())
    with pytest.raises(LmforgeError, match=message.replace("(", r"\(")):
        config_from_hf({**config, field: value}, "config.json")


def test_gemma_features_do_not_export_as_llama():
    config = preset_config("tiny-llama")
    for field, value in (("qk_norm", True), ("sandwich_norm", True), ("scale_embeddings", True), ("sliding_window", 4)):
        changed = type(config)(**{**config.to_dict(), field: value})
        with pytest.raises(LmforgeError, match=field.replace("sliding_window", "local layers")):
            hf_model_type(changed)
