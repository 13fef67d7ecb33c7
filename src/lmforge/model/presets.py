"""Named model presets, and `--model`'s reading of a preset name or a config file that may start
from one. Building a config allocates nothing; parameter counts are checked in tests.

Resolving a name lives here, not in config.py, so that presets build on the config and the
config knows nothing of presets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, RopeScaling


def _gpt2(n_layers: int, d_model: int, n_heads: int, context_length: int = 1024, head_dim: int | None = None) -> dict:
    """GPT-2 / GPT-3 shapes: learned positions, LayerNorm with bias, GELU MLP, biases, tied head."""
    return dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, head_dim=head_dim, vocab_size=50257,
        context_length=context_length, position="learned", norm="layernorm", mlp="gelu",
        qkv_bias=True, attention_out_bias=True, mlp_bias=True, tie_embeddings=True, init="gpt2",
    )


def _llama3(n_layers: int, d_model: int, n_heads: int, d_ff: int, tie: bool, factor: float) -> dict:
    """Llama 3.x: RoPE θ=500k with Llama-3 scaling, RMSNorm, SwiGLU, 8 KV heads, 128k vocabulary."""
    return dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=8, d_ff=d_ff, vocab_size=128256,
        context_length=131072, rope_theta=500000.0, rope_scaling=RopeScaling(factor=factor),
        tie_embeddings=tie,
    )


def _gemma3(n_layers: int, d_model: int, d_ff: int, vocab_size: int = 262144, head_dim: int = 256, n_heads: int = 4,
            n_kv_heads: int = 1, context_length: int = 32768, window: int = 512, global_every: int = 6) -> dict:
    """Gemma 3 (text): five local layers (window 512, θ = 10k) to one global (θ = 1M), QK-norm,
    sandwich unit-offset RMSNorms, GeGLU, √d_model-scaled tied embeddings, 256-wide heads."""
    return dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, d_ff=d_ff,
        vocab_size=vocab_size, context_length=context_length, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
        norm="rmsnorm_unit_offset", norm_eps=1e-6, mlp="geglu", qk_norm=True, query_pre_attn_scalar=float(head_dim),
        sandwich_norm=True, scale_embeddings=True, tie_embeddings=True, sliding_window=window,
        layer_types=["global" if (layer + 1) % global_every == 0 else "local" for layer in range(n_layers)],
    )


# GPT-3 paper, table 2.1: n_layers, d_model, n_heads, d_head (context 2048). The published
# d_head times n_heads is not always d_model (13B: 40 × 128 = 5120 < 5140), so head_dim is explicit.
# For 1.3B the table's 24 heads × 128 = 3072 ≠ 2048 would make a 1.52B model; 16 heads of the
# published d_head = 128 span d_model exactly and give 1.31B, the model the name describes.
_GPT3 = {
    "gpt3-125m": (12, 768, 12, 64),
    "gpt3-350m": (24, 1024, 16, 64),
    "gpt3-760m": (24, 1536, 16, 96),
    "gpt3-1.3b": (24, 2048, 16, 128),
    "gpt3-2.7b": (32, 2560, 32, 80),
    "gpt3-6.7b": (32, 4096, 32, 128),
    "gpt3-13b": (40, 5140, 40, 128),
    "gpt3-175b": (96, 12288, 96, 128),
}

_PRESETS: dict[str, Callable[[], dict]] = {
    "gpt2": lambda: _gpt2(12, 768, 12),
    "gpt2-medium": lambda: _gpt2(24, 1024, 16),
    "gpt2-large": lambda: _gpt2(36, 1280, 20),
    "gpt2-xl": lambda: _gpt2(48, 1600, 25),
    **{name: (lambda shape=shape: _gpt2(shape[0], shape[1], shape[2], 2048, shape[3])) for name, shape in _GPT3.items()},
    "llama-3.2-1b": lambda: _llama3(16, 2048, 32, 8192, tie=True, factor=32.0),
    "llama-3.2-3b": lambda: _llama3(28, 3072, 24, 8192, tie=True, factor=32.0),
    "llama-3.1-8b": lambda: _llama3(32, 4096, 32, 14336, tie=False, factor=8.0),
    "gemma-3-270m": lambda: _gemma3(18, 640, 2048),
    "gemma-3-1b": lambda: _gemma3(26, 1152, 6912),
    # Tiny models for tests and quick CPU experiments.
    "tiny-gpt2": lambda: {**_gpt2(2, 64, 4, 128), "vocab_size": 512},
    "tiny-llama": lambda: dict(
        n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=176, vocab_size=512, context_length=128
    ),
    # head_dim 32 ≠ d_model / n_heads, window 8 and every 3rd layer global: each Gemma feature shows at short lengths.
    "tiny-gemma": lambda: _gemma3(6, 64, 128, vocab_size=512, head_dim=32, n_kv_heads=2, context_length=128, window=8,
                                  global_every=3),
    "tiny-mla-moe": lambda: dict(
        n_layers=2, d_model=64, n_heads=4, vocab_size=512, context_length=128, attention="mla",
        kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
        n_experts=4, n_experts_per_token=2, n_shared_experts=1, moe_d_ff=64, d_ff=176, n_dense_layers=1,
    ),
    # A ~5M-parameter Llama-style model that learns visibly in minutes on a laptop CPU (the quickstart's).
    "small": lambda: dict(n_layers=4, d_model=256, n_heads=8, n_kv_heads=4, d_ff=704, vocab_size=8192,
                          context_length=256, tie_embeddings=True),
}

PRESETS = tuple(_PRESETS)


def preset_config(name: str) -> ModelConfig:
    if name not in _PRESETS:
        raise LmforgeError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return ModelConfig(**_PRESETS[name](), name=name)


def load_model_config(preset_or_file: str | Path) -> ModelConfig:
    """A preset name, or a YAML/JSON file of ModelConfig fields (a `preset:` key starts from a preset)."""
    text = str(preset_or_file)
    if text in PRESETS:
        return preset_config(text)
    path = Path(text)
    if not path.exists():
        raise LmforgeError(
            f"'{text}' is neither a preset nor an existing file; presets: {', '.join(PRESETS)}"
        )
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            values = json.loads(path.read_text(encoding="utf-8"))
    except Exception as error:  # malformed YAML/JSON: say which file and why
        raise LmforgeError(f"{path}: cannot parse model config: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise LmforgeError(f"{path}: a model config must be a mapping of field: value")
    if "preset" in values:
        base = preset_config(values.pop("preset")).to_dict()
        if "n_heads" in values or "d_model" in values:
            base["head_dim"] = None  # re-derive from the new shape unless given
        base.update(values)
        values = base
    return ModelConfig.from_dict(values, source=str(path))
