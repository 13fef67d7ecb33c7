"""`ModelConfig`: every architectural choice of the one `Transformer`, as data.

GPT-2, the GPT-3 family, Llama 2/3, Qwen2, Gemma 3 and DeepSeek-style MLA / MoE models differ only
in the values below; the modules read them at construction time, so the forward pass has no
architecture branches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lmforge.bounds import Bound, above, at_least, between, check_fields
from lmforge.errors import LmforgeError


@dataclass
class RopeScaling:
    """Rotary frequency scaling for long contexts. `llama3`: long wavelengths are slowed by `factor`,
    short ones are kept, and the band between is interpolated (Llama 3.1 release, `apply_scaling`).
    `linear` (position interpolation; Gemma 3 4B and up): every frequency divided by `factor`."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192
    kind: Literal["llama3", "linear"] = "llama3"

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "factor": above(0), "low_freq_factor": above(0), "high_freq_factor": above(0), "original_context_length": at_least(1),
    }

    def __post_init__(self) -> None:
        check_fields(self, "model config field 'rope_scaling.{}'")


@dataclass
class ModelConfig:
    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    context_length: int
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: MQA; in between: GQA
    head_dim: int | None = None  # None: d_model // n_heads; any other width is allowed (Gemma: 256)
    d_ff: int | None = None  # None: 4 * d_model

    # Positions, normalisation, feed-forward, attention: each chooses a small module.
    position: Literal["learned", "rope"] = "rope"
    rope_theta: float = 10000.0  # the rotary base of global layers (of every layer when none is local)
    rope_scaling: RopeScaling | None = None  # global layers only; local layers never see far positions
    # rmsnorm_unit_offset: x̂ · (1 + w) in fp32 (Gemma), so a zero weight is the identity.
    norm: Literal["layernorm", "rmsnorm", "rmsnorm_unit_offset"] = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu", "geglu"] = "swiglu"  # geglu: tanh-GELU gate (Gemma)
    attention: Literal["mha", "mla"] = "mha"
    qkv_bias: bool = False
    attention_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0

    # Gemma 3's choices, each off by default (QK-norm is also Qwen3's and OLMo 2's).
    qk_norm: bool = False  # a `norm` over each head's queries and keys, before rotary positions
    query_pre_attn_scalar: float | None = None  # softmax scale 1/√(this); None: head_dim
    sandwich_norm: bool = False  # also normalise attention's and the feed-forward's outputs before the residual add
    scale_embeddings: bool = False  # token embeddings times √d_model (rounded to the weight dtype, as Gemma does)
    # Local (sliding-window) attention: a query sees itself and the sliding_window - 1 positions before
    # it, so a local layer caches at most that many keys. layer_types lists "global" or "local" per
    # layer; None: every layer local when sliding_window is set (Mistral), else every layer global.
    sliding_window: int | None = None
    layer_types: list[Literal["global", "local"]] | None = None
    rope_local_theta: float | None = None  # the rotary base of local layers; None: rope_theta

    # Multi-head latent attention (DeepSeek-V2 §2.1): keys and values are rebuilt from a cached
    # latent of kv_lora_rank (d_c) plus one shared rope key of qk_rope_head_dim (d_h^R).
    kv_lora_rank: int = 0
    q_lora_rank: int = 0  # 0: queries are not compressed
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0

    # Mixture of experts: n_experts > 0 replaces the dense feed-forward after the first
    # n_dense_layers blocks.
    n_experts: int = 0
    n_experts_per_token: int = 2
    n_shared_experts: int = 0
    moe_d_ff: int | None = None  # None: d_ff
    n_dense_layers: int = 0
    moe_aux_loss_coef: float = 0.01

    init: Literal["gpt2", "llama"] = "llama"
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **dict.fromkeys(("head_dim", "moe_d_ff", "n_experts_per_token", "sliding_window"), at_least(1)),
        **dict.fromkeys(("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                         "n_experts", "n_shared_experts", "n_dense_layers", "moe_aux_loss_coef"), at_least(0)),
        **dict.fromkeys(("rope_theta", "rope_local_theta", "query_pre_attn_scalar", "norm_eps", "init_std"), above(0)),
        "dropout": between(0, 1, high_open=True),
    }

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        check_fields(self, "model config field '{}'")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "context_length", "n_kv_heads", "d_ff"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LmforgeError(f"model config field '{name}' must be a positive integer, got {getattr(self, name)!r}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise LmforgeError(
                    f"model config: n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                    "choose n_heads that divides d_model, or set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise LmforgeError(
                f"model config: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                "each key/value head must serve a whole group of query heads"
            )
        if self.position == "rope" and self.attention == "mha" and self.head_dim % 2:
            raise LmforgeError(f"model config: rotary positions need an even head_dim, got {self.head_dim}")
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, name) < 1:
                    raise LmforgeError(f"model config: attention='mla' needs a positive '{name}'")
            if self.position != "rope":
                raise LmforgeError("model config: attention='mla' uses a decoupled rope key; set position='rope'")
            if self.qk_norm:
                raise LmforgeError("model config: qk_norm is for attention='mha' (MLA normalises its latent instead)")
        if self.n_experts and not 1 <= self.n_experts_per_token <= self.n_experts:
            raise LmforgeError(
                f"model config: n_experts_per_token={self.n_experts_per_token} must be between 1 and n_experts={self.n_experts}"
            )
        self._check_layer_types()
        if self.rope_scaling is not None and "global" not in self.layer_kinds:
            raise LmforgeError("model config: rope_scaling applies to global layers and every layer is local; "
                               "drop rope_scaling or make some layers global")

    def _check_layer_types(self) -> None:
        if self.layer_types is None:
            return
        if isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        if not isinstance(self.layer_types, list) or len(self.layer_types) != self.n_layers:
            raise LmforgeError(
                f"model config field 'layer_types' must list one of global, local for each of the {self.n_layers} layers, "
                f"got {self.layer_types!r}"
            )
        wrong = next((kind for kind in self.layer_types if kind not in ("global", "local")), None)
        if wrong is not None:
            raise LmforgeError(f"model config field 'layer_types' holds {wrong!r}; each entry must be global or local")
        if "local" in self.layer_types and self.sliding_window is None:
            raise LmforgeError("model config: layer_types has local layers but sliding_window is not set; give the window")

    @property
    def layer_kinds(self) -> list[str]:
        """Each layer's kind, global or local: `layer_types`, or what its None means."""
        if self.layer_types is not None:
            return list(self.layer_types)
        return [("local" if self.sliding_window else "global")] * self.n_layers

    def window(self, layer_id: int) -> int | None:
        """How many positions a query of layer `layer_id` sees (itself included); None: all before it."""
        return self.sliding_window if self.layer_kinds[layer_id] == "local" else None

    @property
    def kv_cache_elements_per_token_per_layer(self) -> int:
        """Cached numbers per token per layer (DeepSeek-V2 table 1): 2·n_kv·d_h, or d_c + d_h^R for MLA.
        A local layer holds them for at most sliding_window - 1 positions."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "model config") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LmforgeError(f"{source}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as error:  # a required field is missing
            raise LmforgeError(f"{source}: {error}") from None
        except LmforgeError as error:  # a value out of range: say which file holds it
            raise LmforgeError(f"{source}: {error}") from None
