import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lmforge.model.loss import chunk_rows, cross_entropy, linear_cross_entropy
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer


def _inputs(tokens=37, d_model=16, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, d_model, generator=generator, dtype=torch.float64).requires_grad_()
    weight = torch.randn(vocab, d_model, generator=generator, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    return hidden, weight, targets


def _loss_and_grads(loss_fn, hidden, weight, targets):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (loss * 3.0).backward()  # a non-unit upstream gradient
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("rows", [1, 5, 16, 37, 1000])
def test_equals_unfused_loss_and_gradients(rows):
    hidden, weight, targets = _inputs()
    targets[[3, 10, 11]] = -100  # ignored positions count neither in the loss nor in the mean
    expected = _loss_and_grads(lambda h, w, t: F.cross_entropy(h @ w.T, t), hidden, weight, targets)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, rows=rows), hidden, weight, targets)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e.to(g.dtype), rtol=1e-6, atol=1e-6)


def test_batched_shapes_and_default_chunks():
    hidden, weight, targets = _inputs(tokens=24)
    batched = linear_cross_entropy(hidden.view(4, 6, -1), weight, targets.view(4, 6))
    torch.testing.assert_close(batched, F.cross_entropy(hidden @ weight.T, targets))
    assert chunk_rows(vocab_size=50_257, d_model=768) == 1536
    assert chunk_rows(vocab_size=128_256, d_model=4096) * 128_256 <= 2**27


def test_without_grad_only_the_loss():
    hidden, weight, targets = _inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, rows=8)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets))


def test_all_targets_ignored_gives_zero_not_nan():
    hidden, weight, targets = _inputs()
    loss = linear_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


def test_bf16_autocast_matches_unfused_under_autocast():
    hidden, weight, targets = _inputs(tokens=64, d_model=32, vocab=300)
    hidden, weight = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _loss_and_grads(lambda h, w, t: cross_entropy((h @ w.T)[None], t[None]), hidden, weight, targets)
        got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, rows=16), hidden, weight, targets)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_model_with_targets_equals_logits_then_loss(preset):
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config(preset), vocab_size=97)
    model = Transformer(config).double()
    tokens = torch.randint(0, 97, (2, 12))
    targets = torch.roll(tokens, -1, dims=1)
    cross_entropy(model(tokens).double(), targets).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    reference = cross_entropy(model(tokens), targets).double()
    model.zero_grad()
    loss = model(tokens, targets=targets)
    loss.backward()
    torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-6, atol=1e-8, msg=name)


def test_frozen_output_layer_and_masked_targets():
    """A frozen output layer (LoRA, adapters) gets no gradient, the hidden states the same one as
    unfused; masked targets (a fine-tune's prompt tokens) are left out before any logit is computed."""
    torch.manual_seed(0)
    hidden = torch.randn(6, 16, requires_grad=True)
    weight = torch.randn(50, 16)  # requires_grad False
    targets = torch.tensor([3, -100, 7, -100, -100, 49])
    fused = linear_cross_entropy(hidden, weight, targets, rows=2)
    fused.backward()
    fused_grad, hidden.grad = hidden.grad, None
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(fused_grad, hidden.grad)
    assert weight.grad is None


@pytest.mark.parametrize("weight_trains", [True, False])
def test_linear_log_probs_equal_autograd_through_full_logits(weight_trains):
    """Per-token log-probabilities and both gradients under per-token upstream weights (what DPO
    gives them), chunked (rows=4 over 21 tokens), in fp64; ignored targets give 0 and no gradient."""
    from lmforge.model.loss import linear_log_probs

    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_trains)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :3] = -100
    upstream = torch.randn(3, 7, dtype=torch.float64)
    ours = linear_log_probs(hidden, weight, targets, rows=4)
    (ours * upstream).sum().backward()
    grads = (hidden.grad.clone(), weight.grad.clone() if weight_trains else None)
    hidden.grad = None
    weight.grad = None
    logits = (hidden @ weight.t()).log_softmax(-1)
    expected = logits.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * (targets != -100)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert bool((ours[0, :3] == 0).all())
    torch.testing.assert_close(grads[0], hidden.grad, rtol=0, atol=1e-12)
    if weight_trains:
        torch.testing.assert_close(grads[1], weight.grad, rtol=0, atol=1e-12)
