"""Prefix tuning (Li & Liang 2021): every layer's attention also sees `length` learned key/value
positions before the sequence, the same for every input.

The prefixes go through the KV-cache path: attention appends its keys and values to a cache and
lets each query see every cached position. Without a cache (training, scoring) a forward
pre-hook hands the model one `PrefixCache` a layer, which prepends the prefix; for generation
`model.new_cache` returns caches that already hold it. Either way the sequence's positions start
at the prefix length (explicit positions of packed examples are shifted alike, and every
segment sees the prefix), and the prefix takes `length` positions of the context.

Prefix keys are stored as the cache stores keys: after QK-norm and rotary positions. They are
free parameters, so no rotation is applied to them; only the query rotates, by its position.

With `reparameterize` (the paper's §4.3, for stabler training) the prefixes are computed by an
MLP from an embedding, P = MLP(E); `fold_prefix` replaces that by the plain tensors it computes,
which is what an adapter file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.bounds import Bound, at_least, check_fields
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache, Slots
from lmforge.model.transformer import Transformer


@dataclass
class PrefixConfig:
    """How many prefix positions, and whether an MLP computes them while training: the `--prefix.*` options."""

    length: int = 16
    """Learned key/value positions before the sequence, in every layer."""
    reparameterize: bool = True
    """Train the prefixes through an MLP over an embedding (folded into plain tensors when saved)."""
    hidden: int = 512
    """Hidden width of that MLP."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"length": at_least(1), "hidden": at_least(1)}

    def __post_init__(self) -> None:
        check_fields(self, "--prefix.{}")


class PrefixTable(nn.Module):
    """Plain prefixes: key and value [layers, kv_heads, length, head_dim]."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        super().__init__()
        self.key, self.value = nn.Parameter(key), nn.Parameter(value)
        self.length = key.shape[-2]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s key and value prefix, [1, kv_heads, length, head_dim] each."""
        return self.key[index][None], self.value[index][None]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key, self.value


class PrefixEncoder(nn.Module):
    """Reparameterised prefixes: embedding [length, d_model] → Linear → tanh → Linear to every
    layer's keys and values (the output features run layer, key/value, head, head_dim)."""

    def __init__(self, model_config: ModelConfig, config: PrefixConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.length, self.n_layers = config.length, model_config.n_layers
        self.heads, self.head_dim = model_config.n_kv_heads, model_config.head_dim
        self.per_layer = 2 * self.heads * self.head_dim
        self.embedding = nn.Parameter(torch.randn(config.length, model_config.d_model, device=device, dtype=dtype))
        self.hidden = nn.Linear(model_config.d_model, config.hidden, device=device, dtype=dtype)
        self.out = nn.Linear(config.hidden, self.n_layers * self.per_layer, device=device, dtype=dtype)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Only layer `index`'s rows of the output projection are computed."""
        rows = slice(index * self.per_layer, (index + 1) * self.per_layer)
        flat = F.linear(torch.tanh(self.hidden(self.embedding)), self.out.weight[rows], self.out.bias[rows])
        key, value = flat.view(self.length, 2, self.heads, self.head_dim).permute(1, 2, 0, 3)
        return key[None], value[None]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.out(torch.tanh(self.hidden(self.embedding)))
        key, value = flat.view(self.length, self.n_layers, 2, self.heads, self.head_dim).permute(2, 1, 3, 0, 4)
        return key, value


class PrefixCache:
    """Stands in for a layer's cache when there is none: attention sees the prefix, then the sequence."""

    def __init__(self, prefix: PrefixTable | PrefixEncoder, layer: int) -> None:
        self.prefix, self.layer = prefix, layer
        self.length = prefix.length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
        batch = k.shape[0]
        key, value = self.prefix.layer(self.layer)
        return [torch.cat((key.to(k.dtype).expand(batch, -1, -1, -1), k), dim=-2),
                torch.cat((value.to(v.dtype).expand(batch, -1, -1, -1), v), dim=-2)]


def _supply_prefix_caches(model: Transformer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of the model: without a cache, prefix caches, and explicit positions
    (packed examples) shifted past the prefix as the caches' length shifts the implicit ones."""
    if (args[1] if len(args) > 1 else kwargs.get("cache")) is not None:
        return None
    caches = [PrefixCache(model.prefix, layer) for layer in range(len(model.blocks))]
    if len(args) > 1:
        args = (args[0], caches, *args[2:])
    else:
        kwargs["cache"] = caches
    if kwargs.get("positions") is not None:
        kwargs["positions"] = kwargs["positions"] + model.prefix.length
    return args, kwargs


class PrefixedNewCache:
    """Replaces the model's `new_cache`: the caches it returns already hold the prefix, which counts
    against `max_length` (the prefix occupies the context's first positions)."""

    def __init__(self, model: Transformer, new_cache) -> None:
        self.model, self.new_cache = model, new_cache

    @torch.no_grad()
    def __call__(self, batch_size: int, max_length: int | None = None, dtype: torch.dtype | None = None,
                 slots: Slots | None = None) -> list[KVCache]:
        """Slot caches (`slots`) come empty: each slot takes the prefix when a sequence moves in
        (`infer/engine.py`)."""
        prefix = self.model.prefix
        if max_length is not None and max_length <= prefix.length:
            raise LmforgeError(f"a cache of {max_length} positions has no room after the {prefix.length}-position prefix; "
                               "ask for more positions")
        caches = self.new_cache(batch_size, max_length, dtype, slots)
        if slots is not None:
            return caches
        for layer, cache in enumerate(caches):
            key, value = prefix.layer(layer)
            cache.append(key.expand(batch_size, -1, -1, -1), value.expand(batch_size, -1, -1, -1))
        return caches


def owns(name: str) -> bool:
    """True for the name of a parameter prefix tuning added."""
    return name.startswith("prefix.")


def check_prefix_supported(config: ModelConfig, prefix: PrefixConfig) -> None:
    """Raise unless every layer caches plain keys and values that a prefix can join."""
    if config.attention == "mla":
        raise LmforgeError("--method prefix: this model uses MLA attention (attention='mla'), which caches a latent, "
                           "not keys and values a prefix could join; use lora or adapter")
    local = [str(layer) for layer in range(config.n_layers) if config.window(layer) is not None]
    if local:
        raise LmforgeError(f"--method prefix: layers {', '.join(local)} use sliding-window attention "
                           f"(sliding_window={config.sliding_window}), where the prefix would slide out of view; "
                           "use lora or adapter")
    if prefix.length >= config.context_length:
        raise LmforgeError(f"--prefix.length {prefix.length} leaves no room in the model's context of "
                           f"{config.context_length} positions; choose a shorter prefix")


def apply_prefix(model: Transformer, config: PrefixConfig) -> None:
    """Add the prefixes as `model.prefix`, and the hook and cache factory that feed them to attention."""
    check_prefix_supported(model.config, config)
    weight, model_config = model.token_embedding.weight, model.config  # the output layer may be quantized
    if config.reparameterize:
        model.prefix = PrefixEncoder(model_config, config, weight.device, weight.dtype)
    else:
        shape = (model_config.n_layers, model_config.n_kv_heads, config.length, model_config.head_dim)
        model.prefix = PrefixTable(*(torch.randn(shape, device=weight.device, dtype=weight.dtype) * model_config.init_std
                                     for _ in range(2)))
    model.register_forward_pre_hook(_supply_prefix_caches, with_kwargs=True)
    model.new_cache = PrefixedNewCache(model, model.new_cache)


@torch.no_grad()
def folded_prefix(model: Transformer) -> dict[str, torch.Tensor]:
    """The prefixes as plain tensors, under the names a `PrefixTable` gives them."""
    key, value = model.prefix.tensors()
    return {"prefix.key": key.detach().clone(), "prefix.value": value.detach().clone()}


def fold_prefix(model: Transformer) -> None:
    """Replace a reparameterised prefix by the plain tensors its MLP computes (same function, fewer parameters)."""
    state = folded_prefix(model)
    model.prefix = PrefixTable(state["prefix.key"], state["prefix.value"])
