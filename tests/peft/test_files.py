"""Adapter files: a round trip computes the same logits, on the right base only; the trainable report's numbers."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.checkpoint_directory import load_checkpoint, load_weights, read_config, write_checkpoint
from lmforge.peft import SPECS, AdapterConfig, LoraConfig, PrefixConfig, apply_peft, base_state, trainable_report, \
    trainable_summary
from lmforge.peft.files import ADAPTER_CONFIG_FILE, base_fingerprint, load_adapter, save_adapter

CONFIGS = {"lora": LoraConfig(r=4, targets="all-linear", rslora=True), "adapter": AdapterConfig(size=8),
           "prefix": PrefixConfig(length=3, hidden=16)}


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def _fine_tuned(tiny, perturb, directory, method, preset="tiny-llama"):
    """A checkpoint directory holding a base model's weights (unmerged) and a trained-looking adapter."""
    model = tiny(preset)
    write_checkpoint(model.config, base_state(model), directory)
    fingerprint = base_fingerprint(model.config, load_weights(directory))
    apply_peft(model, method, CONFIGS[method])
    perturb(model, SPECS[method].owns)
    save_adapter(model, directory, method, CONFIGS[method], fingerprint, base="runs/base")
    return model


@pytest.mark.parametrize("method", list(CONFIGS))
def test_round_trip_gives_identical_logits(tiny, perturb, tokens, tmp_path, method):
    trained = _fine_tuned(tiny, perturb, tmp_path / "run", method)
    loaded = load_checkpoint(tmp_path / "run")
    assert load_adapter(loaded, tmp_path / "run") == (method, CONFIGS[method])
    assert torch.allclose(_logits(loaded.eval(), tokens), _logits(trained, tokens), atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "run" / ADAPTER_CONFIG_FILE).read_text())["format"] == "lmforge.adapter.v1"


def test_adapter_for_another_base_is_refused(tiny, perturb, tmp_path):
    _fine_tuned(tiny, perturb, tmp_path / "run", "lora")
    other = tiny(seed=5)
    with pytest.raises(LmforgeError, match=r"adapter\.json: the adapter was trained on base [0-9a-f]{12} \(runs/base\), "
                                            r"but runs/other is base [0-9a-f]{12}"):
        load_adapter(other, tmp_path / "run", source="runs/other")


def test_fingerprint_covers_config_and_every_byte(tiny, tmp_path):
    model = tiny()
    state = base_state(model)
    fingerprint = base_fingerprint(model.config, state)
    assert fingerprint == base_fingerprint(model.config, {name: tensor.clone() for name, tensor in state.items()})
    changed = dict(state, **{"norm.weight": state["norm.weight"].clone()})
    changed["norm.weight"][3] += 1e-3
    assert base_fingerprint(model.config, changed) != fingerprint
    assert base_fingerprint(tiny(rope_theta=500000.0).config, state) != fingerprint
    assert base_fingerprint(model.config, {name: t.to(torch.bfloat16) for name, t in state.items()}) != fingerprint


def test_broken_adapter_files_are_reported(tiny, perturb, tmp_path):
    _fine_tuned(tiny, perturb, tmp_path / "run", "lora")
    path = tmp_path / "run" / ADAPTER_CONFIG_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "config": {**record["config"], "r": 0}}))
    with pytest.raises(LmforgeError, match=r"adapter\.json: --lora\.r must be ≥ 1"):
        load_adapter(tiny(), tmp_path / "run")
    path.write_text(json.dumps({**record, "config": {**record["config"], "r": 2}}))
    with pytest.raises(LmforgeError, match=r"adapter\.safetensors: tensor blocks\.0\.attention\.q_proj\.lora_A\.weight has "
                                            r"shape \(4, 64\), the lora config implies \(2, 64\)"):
        load_adapter(tiny(), tmp_path / "run")
    path.write_text(json.dumps({**record, "method": "ia3"}))
    with pytest.raises(LmforgeError, match="field 'method' is 'ia3'"):
        load_adapter(tiny(), tmp_path / "run")
    with pytest.raises(LmforgeError, match="no adapter.json"):
        load_adapter(tiny(), tmp_path)


def test_save_refuses_another_method(tiny):
    model = tiny()
    apply_peft(model, "adapter", AdapterConfig())
    with pytest.raises(LmforgeError, match="holds adapter parameters, not lora's"):
        save_adapter(model, "unused", "lora", LoraConfig(), "0" * 64)


def test_trainable_summary_counts_weights_gradients_and_adamw(tiny):
    model = tiny()
    apply_peft(model, "lora", LoraConfig(r=2, targets=("q_proj",)))
    config = model.config
    lora = config.n_layers * 2 * (config.d_model + config.n_heads * config.head_dim)
    base = sum(p.numel() for p in tiny().parameters())
    summary = trainable_summary(model)
    assert (summary.trainable_parameters, summary.base_parameters) == (lora, base)
    assert summary.full_fine_tuning_bytes == base * (4 + 4 + 8)
    assert summary.peft_bytes == base * 4 + lora * (4 + 4 + 8)
    report = trainable_report(model, "lora")
    assert f"lora: {lora:,} trainable parameters" in report and "saved" in report


def test_checkpoint_config_is_untouched(tiny, perturb, tmp_path):
    """The base checkpoint a fine-tune writes is a plain one: every command can load it without the adapter."""
    _fine_tuned(tiny, perturb, tmp_path / "run", "prefix")
    assert read_config(tmp_path / "run") == tiny().config
    assert set(load_weights(tmp_path / "run")) == set(base_state(tiny()))
