"""Hugging Face `config.json` ⇄ `ModelConfig` for the gpt2, llama, qwen2 and gemma3 model types.

Two layouts of rotary settings exist in the wild: transformers 4 writes `rope_theta` and
`rope_scaling` (Gemma 3 also `rope_local_base_freq`; what published checkpoints carry);
transformers 5 writes `rope_parameters`, per layer type for Gemma 3. Both are read; the
transformers 4 layout is written, since both major versions (and vLLM, llama.cpp's converters)
read it.
"""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, RopeScaling

# gemma3 is the multimodal checkpoint (gemma-3-4b and up): its text model is converted, the vision
# tower left out; it exports as gemma3_text.
SUPPORTED = ("gpt2", "llama", "qwen2", "gemma3_text", "gemma3")

# transformers' Gemma3TextConfig defaults: published multimodal configs give only what differs.
GEMMA3_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
}
GEMMA3_SLIDING_WINDOW_PATTERN = 6  # where layer_types is absent: every 6th layer global
_GEMMA3_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _require(hf: dict, key: str, source: str) -> Any:
    if key not in hf:
        raise LmforgeError(f"{source}: field '{key}' is missing")
    return hf[key]


def _scaling(parameters: dict | None, source: str) -> RopeScaling | None:
    kind = (parameters or {}).get("rope_type", (parameters or {}).get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(factor=float(parameters["factor"]), kind="linear")
    if kind != "llama3":
        raise LmforgeError(f"{source}: rope scaling type '{kind}' is not supported (supported: default, linear, llama3)")
    return RopeScaling(
        factor=float(parameters["factor"]),
        low_freq_factor=float(parameters["low_freq_factor"]),
        high_freq_factor=float(parameters["high_freq_factor"]),
        original_context_length=int(parameters["original_max_position_embeddings"]),
    )


def _rope(hf: dict, source: str, layer_type: str = "full_attention", theta_key: str = "rope_theta",
          default_theta: float = 10000.0) -> tuple[float, RopeScaling | None]:
    """(θ, scaling) of one layer type; in the transformers 4 layout `theta_key` names its θ, and
    rope_scaling belongs to full-attention layers."""
    parameters = hf.get("rope_parameters")
    if isinstance(parameters, dict) and layer_type in parameters:  # per-layer-type layout
        parameters = parameters[layer_type]
    if parameters:
        return float(parameters.get("rope_theta", hf.get(theta_key, default_theta))), _scaling(parameters, source)
    scaling = hf.get("rope_scaling") if layer_type == "full_attention" else None
    return float(hf.get(theta_key, default_theta)), _scaling(scaling, source)


def _gpt2_from_hf(hf: dict, source: str) -> ModelConfig:
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


def _llama_from_hf(hf: dict, source: str) -> ModelConfig:
    model_type = hf["model_type"]
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


def _gemma3_layer_types(hf: dict, source: str) -> list[str]:
    if hf.get("layer_types") is None:  # the transformers 4 layout: every k-th layer global
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or GEMMA3_SLIDING_WINDOW_PATTERN
        return ["local" if (layer + 1) % pattern else "global" for layer in range(hf["num_hidden_layers"])]
    unknown = sorted(set(hf["layer_types"]) - set(_GEMMA3_LAYER_TYPES))
    if unknown:
        raise LmforgeError(f"{source}: layer_types {', '.join(unknown)} not supported (sliding_attention, full_attention)")
    return [_GEMMA3_LAYER_TYPES[kind] for kind in hf["layer_types"]]


def _gemma3_from_hf(hf: dict, source: str) -> ModelConfig:
    if hf["model_type"] == "gemma3":
        source = f"{source}: text_config"
        tied = hf.get("tie_word_embeddings", True)
        hf = {"tie_word_embeddings": tied, **hf.get("text_config", {}), "model_type": "gemma3"}
    hf = {**GEMMA3_DEFAULTS, **hf}
    if hf["hidden_activation"] != "gelu_pytorch_tanh":
        raise LmforgeError(f"{source}: hidden_activation '{hf['hidden_activation']}' is not supported (gelu_pytorch_tanh)")
    for field in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(field) is not None:
            raise LmforgeError(f"{source}: '{field}: {hf[field]}' is not supported (Gemma 3 has none); set it to null")
    if hf.get("use_bidirectional_attention"):
        raise LmforgeError(f"{source}: 'use_bidirectional_attention: true' is not supported (a causal model is needed)")
    theta, scaling = _rope(hf, source, "full_attention", "rope_theta", GEMMA3_DEFAULTS["rope_theta"])
    local_theta, local_scaling = _rope(hf, source, "sliding_attention", "rope_local_base_freq",
                                       GEMMA3_DEFAULTS["rope_local_base_freq"])
    if local_scaling is not None:
        raise LmforgeError(f"{source}: rope scaling of sliding-attention layers is not supported")
    return ModelConfig(
        n_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf["num_key_value_heads"], head_dim=hf["head_dim"], d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], position="rope",
        rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta, norm="rmsnorm_unit_offset",
        norm_eps=hf["rms_norm_eps"], mlp="geglu", qkv_bias=bool(hf["attention_bias"]),
        attention_out_bias=bool(hf["attention_bias"]), tie_embeddings=bool(hf["tie_word_embeddings"]),
        qk_norm=True, query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]), sandwich_norm=True,
        scale_embeddings=True, sliding_window=hf["sliding_window"], layer_types=_gemma3_layer_types(hf, source),
        init="llama", name=hf["model_type"],
    )


_FROM_HF = {"gpt2": _gpt2_from_hf, "llama": _llama_from_hf, "qwen2": _llama_from_hf,
            "gemma3_text": _gemma3_from_hf, "gemma3": _gemma3_from_hf}


def config_from_hf(hf: dict, source: str) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise LmforgeError(
            f"{source}: model_type '{model_type}' is not supported; lmforge converts {', '.join(SUPPORTED)}"
        )
    return _FROM_HF[model_type](hf, source)


def _gemma_features(config: ModelConfig) -> list[str]:
    """The Gemma-only choices `config` makes: none for gpt2/llama/qwen2, all for gemma3_text."""
    features = {
        "qk_norm": config.qk_norm, "sandwich_norm": config.sandwich_norm, "scale_embeddings": config.scale_embeddings,
        "local layers": "local" in config.layer_kinds, "rope_local_theta": config.rope_local_theta is not None,
        "query_pre_attn_scalar": config.query_pre_attn_scalar not in (None, config.head_dim),
    }
    return [name for name, chosen in features.items() if chosen]


def hf_model_type(config: ModelConfig) -> str:
    """The Hugging Face architecture that computes exactly what `config` does, or an error."""
    if config.attention == "mla" or config.n_experts:
        raise LmforgeError("export of MLA or mixture-of-experts models to Hugging Face is not supported")
    architecture = (config.position, config.norm, config.mlp)
    gemma = _gemma_features(config)
    if architecture == ("rope", "rmsnorm_unit_offset", "geglu"):
        if not (config.qk_norm and config.sandwich_norm and config.scale_embeddings) or config.mlp_bias \
                or config.qkv_bias != config.attention_out_bias:
            raise LmforgeError("a Gemma 3 export needs qk_norm, sandwich_norm and scale_embeddings, no MLP bias, "
                               "and qkv_bias equal to attention_out_bias")
        return "gemma3_text"
    if gemma:
        raise LmforgeError(f"no Hugging Face architecture matches {architecture} with {', '.join(gemma)}; "
                           "these need Gemma 3's norm='rmsnorm_unit_offset' and mlp='geglu'")
    if architecture == ("learned", "layernorm", "gelu"):
        if not (config.qkv_bias and config.attention_out_bias and config.mlp_bias and config.n_kv_heads == config.n_heads
                and config.head_dim * config.n_heads == config.d_model):
            raise LmforgeError("a GPT-2 export needs biases everywhere, MHA, and n_heads · head_dim = d_model")
        return "gpt2"
    if architecture == ("rope", "rmsnorm", "swiglu"):
        if config.qkv_bias and not config.attention_out_bias and not config.mlp_bias:
            return "qwen2"
        if config.qkv_bias == config.attention_out_bias:
            return "llama"
    raise LmforgeError(
        f"no Hugging Face architecture matches position={config.position}, norm={config.norm}, mlp={config.mlp}, "
        f"qkv_bias={config.qkv_bias}, attention_out_bias={config.attention_out_bias}"
    )


def _scaling_to_hf(scaling: RopeScaling | None) -> dict | None:
    if scaling is None:
        return None
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_context_length}


def _gpt2_to_hf(config: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": config.n_layers,
        "n_embd": config.d_model, "n_head": config.n_heads, "n_positions": config.context_length,
        "n_inner": config.d_ff, "vocab_size": config.vocab_size, "layer_norm_epsilon": config.norm_eps,
        "activation_function": "gelu_new", "tie_word_embeddings": config.tie_embeddings,
        "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, "scale_attn_weights": True,
    }


def _decoder_to_hf(config: ModelConfig, architecture: str, model_type: str) -> dict:
    """The fields llama, qwen2 and gemma3_text share."""
    hf = {
        "architectures": [architecture], "model_type": model_type, "num_hidden_layers": config.n_layers,
        "hidden_size": config.d_model, "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "intermediate_size": config.d_ff, "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "tie_word_embeddings": config.tie_embeddings, "attention_dropout": 0.0,
    }
    if config.rope_scaling is not None:
        hf["rope_scaling"] = _scaling_to_hf(config.rope_scaling)
    return hf


def _llama_to_hf(config: ModelConfig) -> dict:
    return {**_decoder_to_hf(config, "LlamaForCausalLM", "llama"), "hidden_act": "silu",
            "attention_bias": config.qkv_bias, "mlp_bias": config.mlp_bias}


def _qwen2_to_hf(config: ModelConfig) -> dict:
    return {**_decoder_to_hf(config, "Qwen2ForCausalLM", "qwen2"), "hidden_act": "silu", "use_sliding_window": False}


def _gemma3_to_hf(config: ModelConfig) -> dict:
    local_types = {kind: hf for hf, kind in _GEMMA3_LAYER_TYPES.items()}
    scalar = config.query_pre_attn_scalar or config.head_dim
    scalar = int(scalar) if float(scalar).is_integer() else scalar  # transformers 5 insists on an int
    return {
        **_decoder_to_hf(config, "Gemma3ForCausalLM", "gemma3_text"), "hidden_activation": "gelu_pytorch_tanh",
        "rope_local_base_freq": config.rope_local_theta or config.rope_theta,
        "rope_scaling": _scaling_to_hf(config.rope_scaling),
        "query_pre_attn_scalar": scalar, "sliding_window": config.sliding_window,
        "layer_types": [local_types[kind] for kind in config.layer_kinds], "attention_bias": config.qkv_bias,
        "final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
    }


_TO_HF = {"gpt2": _gpt2_to_hf, "llama": _llama_to_hf, "qwen2": _qwen2_to_hf, "gemma3_text": _gemma3_to_hf}


def config_to_hf(config: ModelConfig, model_type: str, extra: dict | None = None) -> dict:
    hf = _TO_HF[model_type](config)
    hf.update(extra or {})
    hf["torch_dtype"] = hf.get("torch_dtype", "float32")
    return hf
