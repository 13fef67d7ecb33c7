"""Multi-head latent attention against the DeepSeek-V2 equations (§2.1, eq. 9–19) written out by
hand with the module's own weights, against the same attention with W_UK absorbed into the
queries (§2.1.2: attention over the cached latent itself), and against Hugging Face's
DeepseekV3Attention."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.model.config import ModelConfig
from lmforge.model.mla import LatentAttention
from lmforge.model.positions import build_positions

HEADS, NOPE, ROPE, VALUE, LATENT = 4, 16, 8, 12, 24
BASE = dict(n_layers=1, d_model=64, n_heads=HEADS, vocab_size=64, context_length=64, attention="mla",
            kv_lora_rank=LATENT, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=VALUE, norm_eps=1e-6)


def _module(**fields) -> LatentAttention:
    """A LatentAttention whose outputs are of order one: weights N(0, 1/fan_in), norm gains not ones."""
    torch.manual_seed(0)
    attention = LatentAttention(ModelConfig(**{**BASE, **fields})).eval()
    with torch.no_grad():
        for name, parameter in attention.named_parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
            else:  # RMSNorm gains
                parameter.copy_(1.0 + 0.5 * torch.randn_like(parameter))
    return attention


def _rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoFormer's rotation as complex multiplication: pair (x_i, x_{i+d/2}) turned by position · θ^(-2i/d)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions[:, None].double() * frequencies)
    turned = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat((turned.real, turned.imag), dim=-1).to(x.dtype)


def _queries(attention: LatentAttention, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q^C and q^R [batch, heads, time, dim]: eq. 12–13 (through the c_Q bottleneck) or one projection."""
    if isinstance(attention.q_proj, torch.nn.Sequential):
        down, norm, up = attention.q_proj
        q = _rms_norm(h @ down.weight.T, norm.weight, norm.eps) @ up.weight.T
    else:
        q = h @ attention.q_proj.weight.T
    q = q.unflatten(-1, (HEADS, NOPE + ROPE)).transpose(1, 2)
    return q[..., :NOPE], _rope(q[..., NOPE:], positions)


def _latent(attention: LatentAttention, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_KV = W_DKV·h (eq. 9) and the shared rope key k^R = RoPE(W_KR·h) (eq. 17): all a token leaves in the cache."""
    return h @ attention.kv_down.weight.T, _rope(h @ attention.k_rope_proj.weight.T, positions)


def _up_projections(attention: LatentAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """W_UK [heads, nope, latent] and W_UV [heads, value, latent] (eq. 10–11), stacked per head in kv_up."""
    per_head = attention.kv_up.weight.view(HEADS, NOPE + VALUE, LATENT)
    return per_head[:, :NOPE], per_head[:, NOPE:]


def _visible(queries: int, keys: int, window: int | None) -> torch.Tensor:
    position = torch.arange(keys - queries, keys)[:, None]
    key = torch.arange(keys)[None, :]
    return (key <= position) & (key > position - (window or keys + 1))


def _softmax_attention(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


def reference(attention: LatentAttention, h: torch.Tensor, scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """Eq. 9–19 as written: keys k_i = [W_UK_i·c_KV; k^R], values v_i = W_UV_i·c_KV, per head
    softmax(q_i·k_i / √(d_h + d_h^R)) v_i, then W_O over the concatenated heads."""
    time = h.shape[1]
    positions = torch.arange(time)
    q_nope, q_rope = _queries(attention, h, positions)
    latent, k_rope = _latent(attention, h, positions)
    normed = _rms_norm(latent, attention.kv_norm.weight, attention.kv_norm.eps)
    up_key, up_value = _up_projections(attention)
    k_nope = torch.einsum("btc,hdc->bhtd", normed, up_key)
    values = torch.einsum("btc,hdc->bhtd", normed, up_value)
    queries = torch.cat((q_nope, q_rope), dim=-1)
    keys = torch.cat((k_nope, k_rope[:, None].expand(-1, HEADS, -1, -1)), dim=-1)
    scale = scale or 1 / math.sqrt(NOPE + ROPE)
    weights = _softmax_attention(queries @ keys.transpose(-1, -2) * scale, _visible(time, time, window))
    heads = (weights @ values).transpose(1, 2).flatten(2)
    return heads @ attention.o_proj.weight.T


def absorbed(attention: LatentAttention, h: torch.Tensor) -> torch.Tensor:
    """§2.1.2: W_UK folded into the queries and W_UV into the output, attention runs over the
    normed latent directly: q_i·W_UK_i·c_KV = (W_UK_iᵀ·q_i)·c_KV; the up-projected keys and
    values are never formed."""
    time = h.shape[1]
    positions = torch.arange(time)
    q_nope, q_rope = _queries(attention, h, positions)
    latent, k_rope = _latent(attention, h, positions)
    normed = _rms_norm(latent, attention.kv_norm.weight, attention.kv_norm.eps)
    up_key, up_value = _up_projections(attention)
    q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, up_key)
    scores = q_latent @ normed[:, None].transpose(-1, -2) + q_rope @ k_rope[:, None].transpose(-1, -2)
    weights = _softmax_attention(scores / math.sqrt(NOPE + ROPE), _visible(time, time, None))
    latent_heads = weights @ normed[:, None]  # [batch, heads, time, latent]
    heads = torch.einsum("bhtc,hdc->bthd", latent_heads, up_value).flatten(2)
    return heads @ attention.o_proj.weight.T


def _rope_tables(attention: LatentAttention, time: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [time, rope_dim] for positions start.., as the model's RotaryPositions builds them."""
    positions = torch.arange(start, start + time)
    return build_positions(ModelConfig(**BASE))(torch.zeros(1), positions)[1]["global"]


def _hidden(time: int = 11, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, time, BASE["d_model"], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("q_lora_rank", [0, 20])
def test_output_equals_the_deepseek_v2_equations(q_lora_rank):
    attention = _module(q_lora_rank=q_lora_rank)
    h = _hidden()
    with torch.no_grad():
        actual = attention(h, _rope_tables(attention, h.shape[1]))
        expected = reference(attention, h)
    assert expected.abs().mean() > 0.1  # of order one: the tolerance below is a tight one
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_output_equals_attention_over_the_latent_with_absorbed_projections():
    attention = _module(q_lora_rank=20)
    h = _hidden()
    with torch.no_grad():
        torch.testing.assert_close(attention(h, _rope_tables(attention, h.shape[1])), absorbed(attention, h),
                                   atol=1e-5, rtol=1e-5)


def test_query_pre_attn_scalar_sets_the_softmax_scale():
    attention = _module(query_pre_attn_scalar=7.0)
    h = _hidden()
    with torch.no_grad():
        actual = attention(h, _rope_tables(attention, h.shape[1]))
        torch.testing.assert_close(actual, reference(attention, h, scale=7.0 ** -0.5), atol=1e-5, rtol=1e-5)
        assert (actual - reference(attention, h)).abs().max() > 1e-3  # the default scale gives another answer


def test_local_layer_sees_only_its_window():
    attention = _module(sliding_window=4)
    h = _hidden(time=12)
    with torch.no_grad():
        actual = attention(h, _rope_tables(attention, 12))
        torch.testing.assert_close(actual, reference(attention, h, window=4), atol=1e-5, rtol=1e-5)


def test_decoding_from_the_cache_follows_the_equations_and_caches_latent_and_rope_key():
    attention = _module(q_lora_rank=20)
    h = _hidden(time=9, batch=1)
    cache = attention.new_cache(batch_size=1, max_length=16, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        prefix = attention(h[:, :5], _rope_tables(attention, 5), cache)
        steps = [attention(h[:, t:t + 1], _rope_tables(attention, 1, start=t), cache) for t in range(5, 9)]
        expected = reference(attention, h)
        latent, k_rope = _latent(attention, h, torch.arange(9))
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), expected, atol=1e-5, rtol=1e-5)
    assert [buffer.shape[-1] for buffer in cache.buffers] == [LATENT, ROPE]  # d_c + d_h^R numbers a token, no heads
    torch.testing.assert_close(cache.buffers[0][:, :9], latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.buffers[1][:, :9], k_rope, atol=1e-5, rtol=1e-5)


def test_matches_transformers_deepseek_v3_attention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as deepseek

    q_lora_rank = 20
    attention = _module(q_lora_rank=q_lora_rank)
    hf_config = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=64, num_attention_heads=HEADS, num_key_value_heads=HEADS, q_lora_rank=q_lora_rank,
        kv_lora_rank=LATENT, qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=VALUE, rms_norm_eps=1e-6,
        rope_interleave=False, max_position_embeddings=64, num_hidden_layers=1, attention_bias=False)
    hf_config._attn_implementation = "eager"
    hf = deepseek.DeepseekV3Attention(hf_config, layer_idx=0).eval()
    down, norm, up = attention.q_proj
    hf.load_state_dict({
        "q_a_proj.weight": down.weight, "q_a_layernorm.weight": norm.weight, "q_b_proj.weight": up.weight,
        "kv_a_proj_with_mqa.weight": torch.cat((attention.kv_down.weight, attention.k_rope_proj.weight)),
        "kv_a_layernorm.weight": attention.kv_norm.weight, "kv_b_proj.weight": attention.kv_up.weight,
        "o_proj.weight": attention.o_proj.weight,
    })
    h = _hidden(time=10)
    positions = torch.arange(10)[None].expand(2, -1)
    causal = torch.full((10, 10), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        expected = hf(h, deepseek.DeepseekV3RotaryEmbedding(hf_config)(h, positions), causal)[0]
        actual = attention(h, _rope_tables(attention, 10))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_weight():
    attention = _module(q_lora_rank=20).train()
    h = _hidden()
    attention(h, _rope_tables(attention, h.shape[1])).square().mean().backward()
    for name, parameter in attention.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

