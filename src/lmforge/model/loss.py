"""Next-token losses.

`linear_cross_entropy` fuses the output projection with the loss: it runs over the tokens a chunk
at a time, computing each chunk's logits, its share of the loss and, while the chunk is still in
cache, its gradients. The full [tokens, vocab] logits (and their gradient) never exist at once:
with GPT-2's 50,257-token vocabulary and a batch of 8 × 1,024 tokens that is 1.6 GB of fp32 not
allocated. It is faster too: on 2 CPU cores, output layer + loss forward and backward for 2,048
tokens and an 8k vocabulary take about 160 ms instead of 250 ms unfused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token loss in fp32 (bf16 logits lose too much precision in the log-sum-exp)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)


def chunk_rows(vocab_size: int, d_model: int) -> int:
    """Tokens per chunk. Each chunk reads the whole output weight three times (logits, and the two
    gradients), so chunks of about 2 × d_model tokens keep that traffic below the logits' own; and
    at most 2^27 logits (512 MB in fp32) at once, for large vocabularies on a GPU."""
    return max(64, min(max(256, 2 * d_model), (1 << 27) // vocab_size))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's where it is on, else the weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, when asked, both gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, rows: int, dtype: torch.dtype, need_grad: bool,
                need_weight_grad: bool):
        vocab, width = weight.shape
        padded = -(-vocab // 64) * 64
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            if padded != vocab:  # an odd vocabulary makes the GEMMs up to twice as slow on CPUs; zero rows
                w = torch.cat([w, w.new_zeros(padded - vocab, width)])  # whose logits are masked out instead
            exact = torch.promote_types(dtype, torch.float32)  # logits and sums: fp32, or fp64 for fp64
            valid = targets != ignore_index
            count = valid.sum().clamp(min=1)
            safe = torch.where(valid, targets, torch.zeros_like(targets))
            total = torch.zeros((), dtype=exact, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_grad else None
            grad_weight = torch.zeros((padded, width), dtype=exact, device=weight.device) if need_weight_grad else None
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start:start + rows].to(dtype)
                picked, keep = safe[start:start + rows, None], valid[start:start + rows]
                logits = (h @ w.t()).to(exact)
                logits[:, vocab:] = float("-inf")
                target_logit = logits.gather(1, picked).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(top).exp_()  # softmax × its row sum, in place: one exp pass for loss and gradient
                sums = probs.sum(dim=-1)
                total += torch.where(keep, top.squeeze(1) + sums.log() - target_logit, 0.0).sum()
                if not need_grad:
                    continue
                # d loss / d logits = (softmax - one_hot(target)) / count, zero on ignored tokens
                share = keep.to(exact) / count
                probs.mul_((share / sums)[:, None])
                probs.scatter_add_(1, picked, -share[:, None])
                grad = probs.to(dtype)
                grad_hidden[start:start + rows] = grad @ w
                if need_weight_grad:  # a frozen output layer (LoRA, adapters) needs none
                    grad_weight += grad.t() @ h
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight[:vocab] if need_weight_grad else None)
            ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        # In place: the forward's gradients are used once, and a copy of the output layer's
        # gradient (670 MB for Gemma's 262k × 640) would only raise the peak.
        grad_hidden, grad_weight = ctx.saved_tensors
        weight_grad = None if grad_weight is None else grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden.mul_(grad_loss), weight_grad, None, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                         rows: int | None = None) -> torch.Tensor:
    """Mean next-token loss of `cross_entropy(hidden @ weight.T, targets)`, chunked over tokens.

    `hidden` [..., d_model], `weight` [vocab, d_model], `targets` [...]. Equal to the unfused loss
    and its gradients up to float rounding; logits are summed in fp32 whatever the matmul dtype."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    trained = targets != ignore_index
    if not bool(trained.all()):  # fine-tuning masks most tokens: their logits are never needed
        hidden, targets = hidden[trained], targets[trained]
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    need_weight_grad = torch.is_grad_enabled() and weight.requires_grad
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, rows or chunk_rows(*weight.shape),
                                     _compute_dtype(hidden, weight), need_grad, need_weight_grad)


class _LinearLogProbs(torch.autograd.Function):
    """Per-token log p(target) of `hidden @ weight.T`, chunked like `_LinearCrossEntropy`.

    Each token's log-probability has its own upstream gradient (DPO weighs a sequence's tokens by
    how far its pair is from the margin), so the forward keeps d logp_t / d hidden_t per token —
    independent of the others — and the backward only scales its rows. When the output layer
    trains, the forward also keeps each chunk's d logp / d logits (one-hot − softmax, in the matmul
    dtype: only trained tokens get one), and the backward sums them, scaled, into its gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows: int, dtype: torch.dtype, need_grad: bool, need_weight_grad: bool):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            exact = torch.promote_types(dtype, torch.float32)
            picked = targets[:, None]
            out = torch.empty(hidden.shape[0], dtype=exact, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if need_grad else None
            grad_logits = []
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start:start + rows].to(dtype)
                log_probs = (h @ w.t()).to(exact).log_softmax(dim=-1)
                out[start:start + rows] = log_probs.gather(1, picked[start:start + rows]).squeeze(1)
                if need_grad:  # d logp / d logits = one_hot(target) - softmax
                    grad = log_probs.exp_().neg_().scatter_add_(1, picked[start:start + rows], torch.ones_like(
                        picked[start:start + rows], dtype=exact)).to(dtype)
                    grad_hidden[start:start + rows] = grad @ w
                    if need_weight_grad:
                        grad_logits.append(grad)
        if need_grad:
            ctx.save_for_backward(grad_hidden, hidden if need_weight_grad else None, *grad_logits)
            ctx.settings = (rows, dtype, weight.dtype, weight.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, hidden, *grad_logits = ctx.saved_tensors
        rows, dtype, weight_dtype, weight_shape = ctx.settings
        grad_out = grad_out.to(grad_hidden.dtype)
        weight_grad = None
        if hidden is not None:
            exact = torch.promote_types(dtype, torch.float32)
            weight_grad = torch.zeros(weight_shape, dtype=exact, device=hidden.device)
            with torch.autocast(hidden.device.type, enabled=False):
                for index, grad in enumerate(grad_logits):
                    chunk = slice(index * rows, (index + 1) * rows)
                    weight_grad += (grad.mul_(grad_out[chunk, None].to(dtype)).t() @ hidden[chunk].to(dtype)).to(exact)
            weight_grad = weight_grad.to(weight_dtype)
        return grad_hidden.mul_(grad_out[:, None]), weight_grad, None, None, None, None, None


def linear_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                     rows: int | None = None) -> torch.Tensor:
    """log p(target) of each position of `hidden` [..., d_model] under the output layer `weight`
    [vocab, d_model], shaped like `targets` [...], 0 where the target is `ignore_index`; fp32 (fp64
    for fp64 inputs). Only trained positions get logits, and the full logits never exist at once."""
    shape = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    trained = targets != ignore_index
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    need_weight_grad = torch.is_grad_enabled() and weight.requires_grad
    dtype = _compute_dtype(hidden, weight)
    picked = _LinearLogProbs.apply(hidden[trained], weight, targets[trained], rows or chunk_rows(*weight.shape), dtype,
                                   need_grad, need_weight_grad)
    out = picked.new_zeros(targets.shape[0])
    return out.masked_scatter(trained, picked).reshape(shape)
