"""Small random Hugging Face models saved to disk: the references for parity tests."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")


def _save(model, path):
    model.eval()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """name -> directory of a saved random HF model, built once per test session."""
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    common = dict(vocab_size=96, num_hidden_layers=2, hidden_size=64, intermediate_size=112, num_attention_heads=4,
                  max_position_embeddings=64)
    models = {
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=95, eos_token_id=95)),
        "llama-gqa": transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, num_key_value_heads=2)),
        "llama3-scaled": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **common, num_key_value_heads=1, tie_word_embeddings=True,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16}, rope_theta=500000.0)),
        "qwen2": transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, num_key_value_heads=2)),
    }
    return {name: _save(model, root / name) for name, model in models.items()}
