"""Hugging Face parameter names and layouts ⇄ lmforge's, for gpt2, llama, qwen2 and gemma3.

Llama, Qwen2 and Gemma 3 differ from lmforge only in names (HF already stores q/k in the
half-split rotary layout lmforge uses, and Gemma's norm weights as the offset from one that
lmforge's unit-offset RMSNorm holds). GPT-2 stores its linear layers as `Conv1D` ([in, out], the
transpose of `nn.Linear`) and fuses q, k, v into one `c_attn`.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig

_LLAMA_TOP = {"token_embedding": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
_LLAMA_BLOCK = {
    "attention_norm": "input_layernorm",
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.o_proj": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn.gate_proj": "mlp.gate_proj",
    "ffn.up_proj": "mlp.up_proj",
    "ffn.down_proj": "mlp.down_proj",
}
# Gemma's "post_attention_layernorm" normalises attention's output; the feed-forward's input norm
# is "pre_feedforward_layernorm" (Llama calls that one "post_attention_layernorm").
_GEMMA3_BLOCK = {
    **_LLAMA_BLOCK,
    "attention.q_norm": "self_attn.q_norm",
    "attention.k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffn_norm": "post_feedforward_layernorm",
}
# The text model inside a multimodal gemma3 checkpoint (transformers 5, then 4 names), and what is not text.
_GEMMA3_MULTIMODAL_PREFIXES = {"model.language_model.": "model.", "language_model.model.": "model.",
                               "language_model.lm_head.": "lm_head."}
_GEMMA3_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
_BLOCK_NAMES = {"llama": _LLAMA_BLOCK, "qwen2": _LLAMA_BLOCK, "gemma3_text": _GEMMA3_BLOCK, "gemma3": _GEMMA3_BLOCK}
_GPT2_TOP = {"token_embedding": "wte", "positions.embedding": "wpe", "norm": "ln_f", "lm_head": "lm_head"}
_GPT2_BLOCK = {"attention_norm": "ln_1", "ffn_norm": "ln_2", "attention.o_proj": "attn.c_proj",
               "ffn.up_proj": "mlp.c_fc", "ffn.down_proj": "mlp.c_proj"}
_GPT2_CONV1D = ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored transposed


def _split(name: str) -> tuple[str, str]:
    module, _, kind = name.rpartition(".")
    return module, kind


def _llama_to_lmforge(state: dict[str, torch.Tensor], names: dict[str, str], model_type: str) -> dict[str, torch.Tensor]:
    top = {hf: ours for ours, hf in _LLAMA_TOP.items()}
    block = {hf: ours for ours, hf in names.items()}
    result = {}
    for name, tensor in state.items():
        module, kind = _split(name)
        if module in top:
            result[f"{top[module]}.{kind}"] = tensor
            continue
        parts = module.split(".", 3)  # model, layers, i, rest
        if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in block:
            result[f"blocks.{parts[2]}.{block[parts[3]]}.{kind}"] = tensor
        elif not name.endswith("rotary_emb.inv_freq"):
            raise LmforgeError(f"unexpected tensor '{name}' in a {model_type} checkpoint")
    return result


def _gemma3_text_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A multimodal gemma3 checkpoint's text-model tensors under gemma3_text names."""
    result = {}
    for name, tensor in state.items():
        if name.startswith(_GEMMA3_VISION):
            continue
        prefix = next((prefix for prefix in _GEMMA3_MULTIMODAL_PREFIXES if name.startswith(prefix)), None)
        result[_GEMMA3_MULTIMODAL_PREFIXES[prefix] + name.removeprefix(prefix) if prefix else name] = tensor
    return result


def _llama_to_hf(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    result = {}
    for name, tensor in state.items():
        module, kind = _split(name)
        if module in _LLAMA_TOP:
            result[f"{_LLAMA_TOP[module]}.{kind}"] = tensor
        else:
            _, layer, rest = module.split(".", 2)
            result[f"model.layers.{layer}.{names[rest]}.{kind}"] = tensor
    return result


def _gpt2_to_lmforge(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    top = {hf: ours for ours, hf in _GPT2_TOP.items()}
    block = {hf: ours for ours, hf in _GPT2_BLOCK.items()}
    result = {}
    for name, tensor in state.items():
        name = name.removeprefix("transformer.")
        module, kind = _split(name)
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        if module in top:
            result[f"{top[module]}.{kind}"] = tensor
            continue
        parts = module.split(".", 2)  # h, i, rest
        if len(parts) != 3 or parts[0] != "h":
            raise LmforgeError(f"unexpected tensor '{name}' in a gpt2 checkpoint")
        layer, rest = parts[1], parts[2]
        if rest == "attn.c_attn":
            fused = tensor.t() if kind == "weight" else tensor
            for projection, part in zip("qkv", fused.split(config.d_model, dim=0)):
                result[f"blocks.{layer}.attention.{projection}_proj.{kind}"] = part.contiguous()
        elif rest in block:
            transpose = kind == "weight" and rest in _GPT2_CONV1D
            result[f"blocks.{layer}.{block[rest]}.{kind}"] = tensor.t().contiguous() if transpose else tensor
        else:
            raise LmforgeError(f"unexpected tensor '{name}' in a gpt2 checkpoint")
    return result


def _gpt2_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    result = {}
    for name, tensor in state.items():
        module, kind = _split(name)
        if module in _GPT2_TOP:
            result[f"transformer.{_GPT2_TOP[module]}.{kind}" if module != "lm_head" else name] = tensor
            continue
        _, layer, rest = module.split(".", 2)
        if rest in ("attention.k_proj", "attention.v_proj"):
            continue  # fused into c_attn with q below
        if rest == "attention.q_proj":
            parts = [state[f"blocks.{layer}.attention.{p}_proj.{kind}"] for p in "qkv"]
            fused = torch.cat(parts, dim=0)
            result[f"transformer.h.{layer}.attn.c_attn.{kind}"] = fused.t().contiguous() if kind == "weight" else fused
            continue
        hf_module = _GPT2_BLOCK[rest]
        transpose = kind == "weight" and hf_module in _GPT2_CONV1D
        result[f"transformer.h.{layer}.{hf_module}.{kind}"] = tensor.t().contiguous() if transpose else tensor
    return result


def weights_from_hf(state: dict[str, torch.Tensor], model_type: str, config: ModelConfig) -> dict[str, torch.Tensor]:
    if model_type == "gpt2":
        result = _gpt2_to_lmforge(state, config)
    else:
        if model_type == "gemma3":
            state = _gemma3_text_weights(state)
        result = _llama_to_lmforge(state, _BLOCK_NAMES[model_type], model_type)
    if config.tie_embeddings:
        result.pop("lm_head.weight", None)
    return result


def weights_to_hf(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    if model_type == "gpt2":
        return _gpt2_to_hf(state)
    return _llama_to_hf(state, _BLOCK_NAMES[model_type])
