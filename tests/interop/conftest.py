"""Small random Hugging Face models saved to disk: the references for parity tests."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")


def _save(model, path):
    model.eval()
    model.save_pretrained(path)
    return path


def _gemma3(**fields):
    """A random Gemma3ForCausalLM whose sliding window (8) is shorter than the test sequences, with
    random norm weights (HF initialises them to zero, where x̂ · (1 + w) would not be tested)."""
    import torch

    config = transformers.Gemma3TextConfig(
        vocab_size=96, num_hidden_layers=4, hidden_size=64, intermediate_size=112, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=20, sliding_window=8, max_position_embeddings=64,
        rope_theta=10000.0, rope_local_base_freq=100.0, **fields)
    model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.5)
    return model


def _gemma3_multimodal():
    """A tiny Gemma3ForConditionalGeneration (gemma-3-4b and up): a vision tower around the text model."""
    text = dict(vocab_size=96, num_hidden_layers=2, hidden_size=64, intermediate_size=112, num_attention_heads=4,
                num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=20, sliding_window=8,
                max_position_embeddings=64, sliding_window_pattern=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=95,
                                       boi_token_index=93, eoi_token_index=94)
    return transformers.Gemma3ForConditionalGeneration(config)


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
        # local, local, global, local (every 3rd layer global), tied embeddings, no rope scaling
        "gemma3": _gemma3(sliding_window_pattern=3),
        # explicit layer types, linear rope scaling on the global layers, biases, untied embeddings
        "gemma3-scaled": _gemma3(layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                                 rope_scaling={"rope_type": "linear", "factor": 4.0}, attention_bias=True,
                                 tie_word_embeddings=False),
        "gemma3-multimodal": _gemma3_multimodal(),
    }
    return {name: _save(model, root / name) for name, model in models.items()}


TEXTS = ["The quick brown fox jumps over the lazy dog.", "敏捷的棕色狐狸跳过了懒狗。", "def f(x):\n    return x  # 42"] * 20


def _gguf_configs(vocab_size: int) -> dict:
    """One small config of each architecture lmforge writes to GGUF."""
    import dataclasses

    from lmforge.model.presets import preset_config

    llama = dataclasses.replace(preset_config("tiny-llama"), vocab_size=vocab_size, context_length=64)
    # llama.cpp's gemma3 (and transformers' GGUF reader) fix what GGUF does not store: every 6th layer
    # global, local RoPE base 10,000, attention scale 1/√head_dim with head_dim 256.
    gemma = dataclasses.replace(preset_config("tiny-gemma"), vocab_size=vocab_size, context_length=64, n_heads=2,
                                n_kv_heads=1, head_dim=256, query_pre_attn_scalar=256.0,
                                layer_types=["local"] * 5 + ["global"], rope_local_theta=10_000.0)
    return {
        "llama": llama,
        "llama-tied": dataclasses.replace(llama, tie_embeddings=True, n_kv_heads=1),
        "qwen2": dataclasses.replace(llama, qkv_bias=True, rope_theta=1_000_000.0),
        "gemma3": gemma,
        # transformers' GGUF reader takes GPT-2's n_positions as 1024 whatever the file says
        "gpt2": dataclasses.replace(preset_config("tiny-gpt2"), vocab_size=vocab_size, context_length=1024),
    }


@pytest.fixture(scope="session")
def gguf_checkpoints(tmp_path_factory) -> dict:
    """name -> an lmforge checkpoint directory with random weights (norms too) and a trained tokenizer."""
    import dataclasses

    import torch

    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("gguf")
    tokenizer = train_tokenizer(TEXTS, vocab_size=320)
    tokenizer.save(root / "tokenizer.json")
    found = {}
    for name, config in _gguf_configs(tokenizer.vocab_size).items():
        torch.manual_seed(0)
        model = Transformer(config)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "norm" in parameter_name or parameter_name.endswith("bias"):
                    parameter.normal_(0.0, 0.3)
        save_checkpoint(model, root / name, tokenizer=root / "tokenizer.json",
                        generation={"stop_token_ids": [tokenizer.eos_id], "chat_template": "{{ messages[0]['content'] }}"})
        found[name] = root / name
    return found
