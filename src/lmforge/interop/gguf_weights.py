"""GGUF tensors ⇄ Hugging Face tensors (names and layouts); `hf_weights` maps those to lmforge's.

Names come from the `gguf` package's own table (`TensorNameMap`, the one llama.cpp's converter
uses). Layouts differ from Hugging Face's in three places, undone on reading and redone on
writing, as llama.cpp's converter does:
- llama: q and k rows are permuted from the half-split rotary layout to interleaved pairs
  (llama.cpp's "normal" rope); qwen2 and gemma3 use the half-split ("neox") layout unchanged;
- gemma3: norm weights are stored as 1 + w (Gemma's RMSNorm multiplies by 1 + w);
- gpt2: the `Conv1D` weights Hugging Face stores as [in, out] are stored as [out, in].
"""

from __future__ import annotations

import gguf
import numpy as np
import torch

from lmforge.errors import LmforgeError

_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _name_map(architecture: str, n_layers: int) -> gguf.TensorNameMap:
    kind = next(kind for kind, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    return gguf.get_tensor_name_map(kind, n_layers)


def gguf_name(hf_name: str, names: gguf.TensorNameMap) -> str:
    found = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise LmforgeError(f"tensor '{hf_name}' has no GGUF name for this architecture")
    return found


def _interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Half-split rotary rows (HF) -> interleaved pairs (llama.cpp's llama), per head."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _split_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `_interleave_rotary`."""
    return weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _layout(hf_name: str, hf: dict, architecture: str, to_gguf: bool):
    """The function that turns the tensor between the two layouts, or None when they agree."""
    if architecture == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
        heads = hf["num_attention_heads"] if ".q_proj." in hf_name else hf["num_key_value_heads"]
        return (lambda tensor: _interleave_rotary(tensor, heads)) if to_gguf else (lambda tensor: _split_rotary(tensor, heads))
    if architecture == "gemma3" and hf_name.endswith("norm.weight"):
        return (lambda tensor: tensor + 1) if to_gguf else (lambda tensor: tensor - 1)
    if architecture == "gpt2" and hf_name.endswith(_GPT2_CONV1D):
        return lambda tensor: tensor.t().contiguous()
    return None


def hf_tensors_to_gguf(state: dict[str, torch.Tensor], hf: dict, architecture: str) -> dict[str, torch.Tensor]:
    """Hugging Face tensors -> GGUF names and layouts (fp32, torch's [out, in] order)."""
    names = _name_map(architecture, hf.get("num_hidden_layers", hf.get("n_layer")))
    result = {}
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and hf.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        change = _layout(hf_name, hf, architecture, to_gguf=True)
        tensor = tensor.detach().float()
        result[gguf_name(hf_name, names)] = change(tensor) if change else tensor
    return result


def gguf_tensors_to_hf(read, hf_names: list[str], hf: dict, architecture: str, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face tensors named `hf_names` from a GGUF file; `read(gguf_name)` returns the
    dequantized array, or None when the file has no such tensor."""
    names = _name_map(architecture, hf.get("num_hidden_layers", hf.get("n_layer")))
    state = {}
    for hf_name in hf_names:
        if hf_name == "lm_head.weight" and hf.get("tie_word_embeddings"):
            continue
        name = gguf_name(hf_name, names)
        array = read(name)
        if array is None:
            raise LmforgeError(f"{source}: tensor '{name}' is missing")
        # F32 tensors are read-only views of the file: copy those; dequantized ones are fresh arrays.
        tensor = torch.from_numpy(array.astype(np.float32, copy=not array.flags.writeable))
        change = _layout(hf_name, hf, architecture, to_gguf=False)
        state[hf_name] = change(tensor) if change else tensor
    return state
