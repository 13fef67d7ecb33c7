"""GGUF metadata ⇄ a Hugging Face `config.json` dict, for the llama, qwen2, gemma3 and gpt2
architectures; `hf_config` takes it from there to a `ModelConfig`.

Going through the Hugging Face config keeps one definition of each architecture in lmforge
(`config_from_hf` / `config_to_hf`) and mirrors llama.cpp's own converter, which reads Hugging
Face configs. What GGUF leaves implicit is filled in as llama.cpp does at load time: Gemma 3's
local layers use RoPE base 10,000 and every 6th layer is global; its attention scale is
1/√head_dim.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError

# GGUF `general.architecture` -> Hugging Face model_type, and back.
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text", "gpt2": "gpt2"}
ARCHITECTURES = {model_type: architecture for architecture, model_type in MODEL_TYPES.items()}

# Hugging Face key <- GGUF key (after the `ARCH.` prefix), per family.
_ROPE_KEYS = {
    "num_hidden_layers": "block_count", "hidden_size": "embedding_length", "intermediate_size": "feed_forward_length",
    "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length", "max_position_embeddings": "context_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon", "rope_theta": "rope.freq_base",
}
_GPT2_KEYS = {
    "n_layer": "block_count", "n_embd": "embedding_length", "n_inner": "feed_forward_length",
    "n_head": "attention.head_count", "n_positions": "context_length", "layer_norm_epsilon": "attention.layer_norm_epsilon",
}
KEYS = {"llama": _ROPE_KEYS, "qwen2": _ROPE_KEYS, "gpt2": _GPT2_KEYS,
        "gemma3": {**_ROPE_KEYS, "sliding_window": "attention.sliding_window"}}
REQUIRED = {"block_count", "embedding_length", "attention.head_count"}
GEMMA3_GLOBAL_EVERY = 6  # llama.cpp's set_swa_pattern(6) for gemma3
GEMMA3_LOCAL_ROPE_THETA = 10_000.0


def hf_config_from_gguf(metadata: dict[str, Any], vocab_size: int, tied: bool, source: str) -> dict:
    """The Hugging Face config.json that describes the model in a GGUF file's metadata."""
    architecture = metadata.get("general.architecture")
    if architecture not in MODEL_TYPES:
        raise LmforgeError(
            f"{source}: general.architecture '{architecture}' is not supported; lmforge reads {', '.join(MODEL_TYPES)}"
        )
    hf: dict[str, Any] = {"model_type": MODEL_TYPES[architecture], "vocab_size": vocab_size, "tie_word_embeddings": tied}
    for hf_key, key in KEYS[architecture].items():
        value = metadata.get(f"{architecture}.{key}")
        if value is None:
            if key in REQUIRED:
                raise LmforgeError(f"{source}: metadata field '{architecture}.{key}' is missing")
            continue
        hf[hf_key] = value
    scaling = metadata.get(f"{architecture}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear" or architecture != "gemma3":
            raise LmforgeError(f"{source}: {architecture}.rope.scaling.type '{scaling}' is not supported")
        hf["rope_scaling"] = {"rope_type": "linear", "factor": float(metadata[f"{architecture}.rope.scaling.factor"])}
    if architecture == "gemma3":
        head_dim = hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
        hf.update(
            head_dim=head_dim, query_pre_attn_scalar=head_dim, rope_local_base_freq=GEMMA3_LOCAL_ROPE_THETA,
            hidden_activation="gelu_pytorch_tanh",
            layer_types=["full_attention" if (layer + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention"
                         for layer in range(hf["num_hidden_layers"])],
        )
    return hf


def gguf_metadata_from_hf(hf: dict, source: str) -> tuple[str, dict[str, Any]]:
    """The GGUF architecture name and `ARCH.key -> value` metadata for a Hugging Face config."""
    architecture = ARCHITECTURES.get(hf["model_type"])
    if architecture is None:
        raise LmforgeError(f"{source}: GGUF export covers {', '.join(ARCHITECTURES)}, not {hf['model_type']}")
    if hf.get("rope_scaling") and architecture != "gemma3":
        raise LmforgeError(f"{source}: GGUF export of rope scaling ({hf['rope_scaling'].get('rope_type')}) is not supported")
    if architecture == "gemma3":
        expected = [(layer + 1) % GEMMA3_GLOBAL_EVERY == 0 for layer in range(hf["num_hidden_layers"])]
        if [kind == "full_attention" for kind in hf["layer_types"]] != expected:
            raise LmforgeError(f"{source}: llama.cpp's gemma3 makes every {GEMMA3_GLOBAL_EVERY}th layer global; this model's layers differ")
        if float(hf.get("rope_local_base_freq", GEMMA3_LOCAL_ROPE_THETA)) != GEMMA3_LOCAL_ROPE_THETA:
            raise LmforgeError(f"{source}: llama.cpp's gemma3 uses local RoPE base {GEMMA3_LOCAL_ROPE_THETA:g}")
        if hf["query_pre_attn_scalar"] != hf["head_dim"]:
            raise LmforgeError(f"{source}: llama.cpp's gemma3 scales attention by 1/√head_dim; query_pre_attn_scalar differs")
    metadata = {f"{architecture}.{key}": hf[hf_key] for hf_key, key in KEYS[architecture].items() if hf.get(hf_key) is not None}
    if architecture in ("llama", "qwen2"):
        metadata[f"{architecture}.attention.value_length"] = hf["head_dim"]
        metadata[f"{architecture}.rope.dimension_count"] = hf["head_dim"]
    if architecture == "gemma3":
        metadata["gemma3.attention.value_length"] = hf["head_dim"]
        if scaling := hf.get("rope_scaling"):
            metadata["gemma3.rope.scaling.type"] = "linear"
            metadata["gemma3.rope.scaling.factor"] = float(scaling["factor"])
    return architecture, metadata
