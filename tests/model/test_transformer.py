"""The Transformer: a Llama-style forward pass equals one written out by hand from its weights;
the output modes agree with each other; weights are initialised, tied and built on the meta device
as documented; each layer gets the cache its kind needs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.config import ModelConfig
from lmforge.model.kv_cache import KVCache, SlidingKVCache
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer, _holds_several

LLAMA = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, vocab_size=101, context_length=64,
             rope_theta=500.0, norm_eps=1e-6)


def _randomised(model: Transformer) -> Transformer:
    """Weights of order one (N(0, 1/fan_in)) and norm gains away from one, so every term shows."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
            else:
                parameter.copy_(1.0 + 0.3 * torch.randn_like(parameter))
    return model


def _rms_norm(x, gain, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def _rope(x, theta):
    """Rotate pairs (x_i, x_{i+d/2}) of x [batch, heads, time, dim] by position · θ^(-2i/d)."""
    half = x.shape[-1] // 2
    angles = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * theta ** (-torch.arange(half) * 2 / x.shape[-1])
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def llama_reference(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Llama's forward pass from the weights: pre-norm blocks of GQA attention with rotary
    positions and a SwiGLU feed-forward, a final RMSNorm and the output layer."""
    config = model.config
    eps, heads, kv_heads, head_dim = config.norm_eps, config.n_heads, config.n_kv_heads, config.head_dim
    batch, time = tokens.shape
    x = model.token_embedding.weight[tokens]
    causal = torch.ones(time, time, dtype=torch.bool).tril()
    for block in model.blocks:
        attention, mlp = block.attention, block.ffn
        h = _rms_norm(x, block.attention_norm.weight, eps)
        q = (h @ attention.q_proj.weight.T).view(batch, time, heads, head_dim).transpose(1, 2)
        k = (h @ attention.k_proj.weight.T).view(batch, time, kv_heads, head_dim).transpose(1, 2)
        v = (h @ attention.v_proj.weight.T).view(batch, time, kv_heads, head_dim).transpose(1, 2)
        q, k = _rope(q, config.rope_theta), _rope(k, config.rope_theta)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))  # query head i reads kv head i // group
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~causal, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, time, heads * head_dim)
        x = x + attended @ attention.o_proj.weight.T
        h = _rms_norm(x, block.ffn_norm.weight, eps)
        gated = F.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)
        x = x + gated @ mlp.down_proj.weight.T
    return _rms_norm(x, model.norm.weight, eps) @ model.lm_head.weight.T


def _tokens(config: ModelConfig, time: int = 13, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, time), generator=torch.Generator().manual_seed(1))


def test_llama_forward_equals_the_written_out_reference():
    torch.manual_seed(0)
    model = _randomised(Transformer(ModelConfig(**LLAMA))).eval()
    tokens = _tokens(model.config)
    with torch.no_grad():
        actual, expected = model(tokens), llama_reference(model, tokens)
    assert expected.std() > 0.5
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_output_modes_agree():
    """hidden_states then the output layer is the logits; targets give the mean cross-entropy of
    those logits (ignoring -100); log_probs give each target's log-softmax, 0 where ignored."""
    torch.manual_seed(0)
    model = _randomised(Transformer(ModelConfig(**LLAMA))).eval()
    tokens = _tokens(model.config)
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, -1] = -100
    with torch.no_grad():
        logits = model(tokens)
        hidden = model(tokens, hidden_states=True)
        loss = model(tokens, targets=targets)
        log_probs = model(tokens, targets=targets, log_probs=True)
    assert hidden.shape == (2, 13, LLAMA["d_model"])
    torch.testing.assert_close(model.lm_head(hidden), logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100))
    kept = targets.clamp(min=0)
    expected = logits.log_softmax(-1).gather(-1, kept[..., None])[..., 0].masked_fill(targets == -100, 0.0)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)


def test_rotary_attention_sees_relative_positions_only():
    """Shifting every position by the same amount changes nothing with rotary positions, and
    changes the output with learned absolute ones: `positions` reaches the position module."""
    torch.manual_seed(0)
    shift = torch.arange(7, 20)[None]
    rotary = _randomised(Transformer(ModelConfig(**LLAMA))).eval()
    learned = Transformer(ModelConfig(**{**LLAMA, "position": "learned"})).eval()
    tokens = _tokens(rotary.config)
    with torch.no_grad():
        torch.testing.assert_close(rotary(tokens, positions=shift), rotary(tokens), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(learned(tokens, positions=shift), learned(tokens), atol=1e-3)


@pytest.mark.parametrize("init, depths", [("gpt2", lambda layers, layer: 2 * layers),
                                          ("llama", lambda layers, layer: 2 * (layer + 1))])
def test_residual_projections_are_scaled_by_depth(init, depths):
    torch.manual_seed(0)
    config = ModelConfig(n_layers=3, d_model=256, n_heads=4, d_ff=512, vocab_size=300, context_length=16,
                         init=init, init_std=0.02, qkv_bias=True, mlp_bias=True, attention_out_bias=True)
    model = Transformer(config)
    for layer, block in enumerate(model.blocks):
        expected = 0.02 / math.sqrt(depths(config.n_layers, layer))
        for residual in (block.attention.o_proj.weight, block.ffn.down_proj.weight):
            assert residual.std().item() == pytest.approx(expected, rel=0.05)
        assert block.attention.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert not block.attention.q_proj.bias.any() and not block.ffn.up_proj.bias.any()
        assert torch.equal(block.attention_norm.weight, torch.ones(256))
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_tied_embeddings_are_one_tensor_and_learn_from_both_uses():
    torch.manual_seed(0)
    config = ModelConfig(**{**LLAMA, "tie_embeddings": True})
    model = Transformer(config)
    assert model.lm_head.weight is model.token_embedding.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in Transformer(ModelConfig(**LLAMA)).parameters()) \
        - config.vocab_size * config.d_model
    tokens = _tokens(config)
    model(tokens, targets=torch.roll(tokens, -1, dims=1)).backward()
    unused = sorted(set(range(config.vocab_size)) - set(tokens.flatten().tolist()))
    # a row never fed in still gets the output layer's gradient
    assert model.token_embedding.weight.grad[unused].abs().sum() > 0


def test_meta_build_then_materialise_equals_a_cpu_build():
    """Large models are built on the meta device and allocated later (to_empty): the rope
    frequencies (non-persistent buffers) and the tie must come back."""
    config = ModelConfig(**{**LLAMA, "tie_embeddings": True})
    torch.manual_seed(0)
    on_cpu = Transformer(config).eval()
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.init_buffers()
    assert model.lm_head.weight is model.token_embedding.weight
    model.load_state_dict(on_cpu.state_dict())
    assert torch.equal(model.positions.global_inverse_frequencies, on_cpu.positions.global_inverse_frequencies)
    tokens = _tokens(config)
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens), on_cpu(tokens))


def test_each_layer_kind_gets_its_cache():
    config = ModelConfig(**{**LLAMA, "n_layers": 3, "sliding_window": 4, "layer_types": ["local", "global", "local"]})
    model = Transformer(config).to(torch.bfloat16)
    cache = model.new_cache(batch_size=3, max_length=20)
    assert [type(layer) for layer in cache] == [SlidingKVCache, KVCache, SlidingKVCache]
    assert cache[1].buffers[0].shape == (3, config.n_kv_heads, 20, config.head_dim)
    assert cache[0].buffers[0].shape[-2] == 3  # the window minus the query itself
    assert all(buffer.dtype == torch.bfloat16 for layer in cache for buffer in layer.buffers)  # the weights' dtype
    assert model.new_cache(1)[1].max_length == config.context_length


def test_moe_aux_loss_is_the_weighted_sum_over_moe_blocks():
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-mla-moe"), n_layers=3, moe_aux_loss_coef=0.5)
    model = Transformer(config)
    model(_tokens(config))
    losses = [block.ffn.aux_loss for block in model.blocks[config.n_dense_layers:]]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    torch.testing.assert_close(model.moe_aux_loss(), 0.5 * (losses[0] + losses[1]))
    dense = Transformer(ModelConfig(**LLAMA))
    assert dense.moe_aux_loss().item() == 0.0


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**LLAMA, "dropout": 0.5}))
    tokens = _tokens(model.config)
    with torch.no_grad():
        assert not torch.equal(model.train()(tokens), model(tokens))
        assert torch.equal(model.eval()(tokens), model(tokens))


@pytest.mark.parametrize("segments, several", [
    ([[1, 1, 1, 0], [2, 2, 2, 2]], False),  # one example a row (padding aside), whatever its number
    ([[1, 1, 2, 0], [1, 1, 1, 1]], True),
    ([[0, 0, 0, 0]], False),
])
def test_holds_several(segments, several):
    assert _holds_several(torch.tensor(segments)) is several
