"""Prefix tuning: the same prefix with and without a KV cache, folded or not, trained alone; refused where it cannot work."""

from __future__ import annotations

import pytest
import torch

from lmforge.distributed.activation_checkpointing import apply_activation_checkpointing
from lmforge.errors import LmforgeError
from lmforge.infer.generate import generate_tokens
from lmforge.peft import PrefixConfig, apply_peft, fold_prefix, peft_state
from lmforge.peft.prefix import owns


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("reparameterize", [True, False])
def test_cached_generation_equals_argmax_of_full_forward(tiny, perturb, preset, reparameterize):
    model = tiny(preset)
    apply_peft(model, "prefix", PrefixConfig(length=5, reparameterize=reparameterize, hidden=32))
    perturb(model, owns)
    prompt = [3, 17, 42, 8]
    generated = list(generate_tokens(model, prompt, max_new_tokens=20, temperature=0.0))
    assert len(generated) == 20  # the prefix takes context positions, not the tokens asked for
    sequence = prompt + generated
    logits = _logits(model, torch.tensor([sequence[:-1]]))[0]  # no cache: the hook supplies the prefix
    assert logits[len(prompt) - 1:].argmax(-1).tolist() == generated


def test_prefix_changes_the_output_and_caches_hold_it(tiny, tokens):
    model = tiny()
    before = _logits(model, tokens)
    apply_peft(model, "prefix", PrefixConfig(length=3, reparameterize=False))
    assert not torch.allclose(_logits(model, tokens), before, atol=1e-4)
    caches = model.new_cache(2, 20)
    assert [cache.length for cache in caches] == [3, 3]
    assert torch.equal(caches[1].buffers[0][:, :, :3], model.prefix.key[1][None].expand(2, -1, -1, -1))
    with pytest.raises(LmforgeError, match="no room after the 3-position prefix"):
        model.new_cache(1, 3)


def test_fold_gives_identical_logits(tiny, perturb, tokens):
    model = tiny()
    apply_peft(model, "prefix", PrefixConfig(length=4, hidden=16))
    perturb(model, owns)
    reparameterized, folded_state = _logits(model, tokens), peft_state(model)
    assert set(folded_state) == {"prefix.key", "prefix.value"}
    assert folded_state["prefix.key"].shape == (2, model.config.n_kv_heads, 4, model.config.head_dim)
    fold_prefix(model)
    assert sorted(name for name, _ in model.named_parameters() if owns(name)) == ["prefix.key", "prefix.value"]
    assert torch.equal(model.prefix.key, folded_state["prefix.key"])
    assert (_logits(model, tokens) - reparameterized).abs().max() < 1e-6


def test_only_the_prefix_trains(tiny, tokens):
    model = tiny()
    trainable = apply_peft(model, "prefix", PrefixConfig(length=4, hidden=16))
    assert trainable == ["prefix.embedding", "prefix.hidden.weight", "prefix.hidden.bias", "prefix.out.weight",
                         "prefix.out.bias"]
    model(tokens, targets=tokens).backward()
    assert all((parameter.grad is not None) == owns(name) for name, parameter in model.named_parameters())
    assert model.prefix.embedding.grad.abs().sum() > 0


def test_activation_checkpointing_keeps_the_prefix(tiny, perturb, tokens):
    model = tiny()
    apply_peft(model, "prefix", PrefixConfig(length=4, reparameterize=False))
    perturb(model, owns)
    model.train()
    plain = model(tokens, targets=tokens)
    apply_activation_checkpointing(model, 1)
    recomputed = model(tokens, targets=tokens)
    assert torch.allclose(recomputed, plain, atol=1e-6)
    recomputed.backward()
    assert model.prefix.key.grad.abs().sum() > 0


def test_packed_examples_see_the_prefix_and_start_after_it(tiny, perturb):
    """Two examples packed in one row compute what each computes alone (positions and segments given)."""
    model = tiny()
    apply_peft(model, "prefix", PrefixConfig(length=4, reparameterize=False))
    perturb(model, owns)
    first, second = torch.tensor([[5, 9, 2]]), torch.tensor([[7, 1, 3, 4]])
    packed = torch.cat((first, second), dim=1)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    segments = torch.tensor([[1, 1, 1, 2, 2, 2, 2]])
    with torch.no_grad():
        together = model(packed, positions=positions, segments=segments)
        alone = torch.cat((model(first), model(second)), dim=1)
    assert torch.allclose(together, alone, atol=1e-5), (together - alone).abs().max()


def test_mla_and_sliding_window_are_refused(tiny):
    with pytest.raises(LmforgeError, match="MLA attention"):
        apply_peft(tiny("tiny-mla-moe"), "prefix", PrefixConfig())
    with pytest.raises(LmforgeError, match=r"layers 0, 1, 3, 4 use sliding-window attention \(sliding_window=8\)"):
        apply_peft(tiny("tiny-gemma"), "prefix", PrefixConfig())
    with pytest.raises(LmforgeError, match="--prefix.length 64 leaves no room"):
        apply_peft(tiny(), "prefix", PrefixConfig(length=64))
