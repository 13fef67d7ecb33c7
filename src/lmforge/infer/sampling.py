"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None, tokenizer_vocab_size: int | None = None) -> torch.Tensor:
    """Next token ids [batch] from logits [batch, vocab]; temperature 0 is greedy (argmax).

    Ids at or above `tokenizer_vocab_size` are never chosen: a padded embedding (Qwen2's 151,936
    rows for 151,665 tokens) has rows no token decodes to.
    """
    logits = logits[..., :tokenizer_vocab_size]
    if temperature <= 0:  # the first largest, as argmax; max's reduction is 1.5-4× faster on a CPU (bf16 most)
        return logits.max(dim=-1).indices
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        # Keep the smallest set of tokens whose probability reaches top_p (Holtzman et al. 2019).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already enough
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probabilities = logits.softmax(dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
