"""Hugging Face `config.json` ⇄ `ModelConfig` for the gpt2, llama and qwen2 model types.

Two layouts of rotary settings exist in the wild: transformers 4 writes `rope_theta` and
`rope_scaling` (what published checkpoints carry); transformers 5 writes `rope_parameters`.
Both are read; the transformers 4 layout is written, since both major versions (and vLLM,
llama.cpp's converters) read it.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, RopeScaling

SUPPORTED = ("gpt2", "llama", "qwen2")


def _require(hf: dict, key: str, source: str) -> Any:
    if key not in hf:
        raise LmforgeError(f"{source}: field '{key}' is missing")
    return hf[key]


def _rope(hf: dict, source: str) -> tuple[float, RopeScaling | None]:
    parameters = hf.get("rope_parameters")
    if isinstance(parameters, dict) and "full_attention" in parameters:  # per-layer-type layout
        parameters = parameters["full_attention"]
    if parameters:
        theta, scaling = parameters.get("rope_theta", hf.get("rope_theta", 10000.0)), parameters
    else:
        theta, scaling = hf.get("rope_theta", 10000.0), hf.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise LmforgeError(f"{source}: rope scaling type '{kind}' is not supported (supported: default, llama3)")
    return float(theta), RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_context_length=int(scaling["original_max_position_embeddings"]),
    )


def config_from_hf(hf: dict, source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise LmforgeError(
            f"{source}: model_type '{model_type}' is not supported; lmforge converts {', '.join(SUPPORTED)}"
        )
    if model_type == "gpt2":
        activation = hf.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise LmforgeError(f"{source}: activation_function '{activation}' is not supported (gelu_new)")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise LmforgeError(f"{source}: '{flag}: true' is not supported")
        d_model = _require(hf, "n_embd", source)
        return ModelConfig(
            n_layers=_require(hf, "n_layer", source), d_model=d_model, n_heads=_require(hf, "n_head", source),
            vocab_size=_require(hf, "vocab_size", source), context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
            d_ff=hf.get("n_inner") or 4 * d_model, position="learned", norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", qkv_bias=True, attention_out_bias=True,
            mlp_bias=True, tie_embeddings=hf.get("tie_word_embeddings", True), init="gpt2", name="gpt2",
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise LmforgeError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported (silu)")
    if hf.get("use_sliding_window"):
        raise LmforgeError(f"{source}: sliding-window attention is not supported; set use_sliding_window: false")
    theta, scaling = _rope(hf, source)
    n_heads = _require(hf, "num_attention_heads", source)
    d_model = _require(hf, "hidden_size", source)
    attention_bias = model_type == "qwen2" or bool(hf.get("attention_bias", False))
    return ModelConfig(
        n_layers=_require(hf, "num_hidden_layers", source), d_model=d_model, n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim") or d_model // n_heads,
        d_ff=_require(hf, "intermediate_size", source), vocab_size=_require(hf, "vocab_size", source),
        context_length=hf.get("max_position_embeddings", 2048), position="rope", rope_theta=theta,
        rope_scaling=scaling, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
        qkv_bias=attention_bias, attention_out_bias=model_type == "llama" and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init="llama", name=model_type,
    )


def hf_model_type(config: ModelConfig) -> str:
    """The Hugging Face architecture that computes exactly what `config` does, or an error."""
    if config.attention == "mla" or config.n_experts:
        raise LmforgeError("export of MLA or mixture-of-experts models to Hugging Face is not supported")
    if (config.position, config.norm, config.mlp) == ("learned", "layernorm", "gelu"):
        if not (config.qkv_bias and config.attention_out_bias and config.mlp_bias and config.n_kv_heads == config.n_heads
                and config.head_dim * config.n_heads == config.d_model):
            raise LmforgeError("a GPT-2 export needs biases everywhere, MHA, and n_heads · head_dim = d_model")
        return "gpt2"
    if (config.position, config.norm, config.mlp) == ("rope", "rmsnorm", "swiglu"):
        if config.qkv_bias and not config.attention_out_bias and not config.mlp_bias:
            return "qwen2"
        if config.qkv_bias == config.attention_out_bias:
            return "llama"
    raise LmforgeError(
        f"no Hugging Face architecture matches position={config.position}, norm={config.norm}, mlp={config.mlp}, "
        f"qkv_bias={config.qkv_bias}, attention_out_bias={config.attention_out_bias}"
    )


def config_to_hf(config: ModelConfig, model_type: str, extra: dict | None = None) -> dict:
    if model_type == "gpt2":
        hf = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": config.n_layers,
            "n_embd": config.d_model, "n_head": config.n_heads, "n_positions": config.context_length,
            "n_inner": config.d_ff, "vocab_size": config.vocab_size, "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new", "tie_word_embeddings": config.tie_embeddings,
            "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "scale_attn_weights": True,
        }
    else:
        hf = {
            "architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": model_type, "num_hidden_layers": config.n_layers, "hidden_size": config.d_model,
            "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
            "head_dim": config.head_dim, "intermediate_size": config.d_ff, "vocab_size": config.vocab_size,
            "max_position_embeddings": config.context_length, "rms_norm_eps": config.norm_eps,
            "hidden_act": "silu", "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings,
            "attention_dropout": 0.0,
        }
        if model_type == "llama":
            hf.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
        else:
            hf.update(use_sliding_window=False)
        if config.rope_scaling is not None:
            s = config.rope_scaling
            hf["rope_scaling"] = {
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_context_length,
            }
    hf.update(extra or {})
    hf["torch_dtype"] = hf.get("torch_dtype", "float32")
    return hf
