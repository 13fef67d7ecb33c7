"""Log-likelihood of continuations: the engine under zero/few-shot tasks and the lm-eval adapter.

A request is (context ids, continuation ids); its score is the sum of log P(token | everything
before it) over the continuation's tokens, and whether each of those tokens is the model's argmax
(a greedy decode would have written the continuation). This is lm-evaluation-harness's
`loglikelihood`, and `rolling_windows` / `rolling_loglikelihood` are its `loglikelihood_rolling`.

A context too long for the model's window is cut from the LEFT, the continuation kept whole, as the
harness does; `truncated_count` says how many requests that happens to, so callers can report it.

Speed, with results that do not depend on it (fp32: equal to one unpadded forward per request up to
float rounding, whatever the batch size):
- requests that share a long context (the choices of a few-shot question) run the context once into
  a KV cache, then all their continuations as one batch from copies of that cache (when that saves
  at least REUSE_CONTEXT_TOKENS tokens; a short context is cheaper to repeat inside a big batch);
- the other requests run longest first (as lm-eval orders them), right-padded in batches: with
  causal attention a padded position comes after every real one, so no real token sees it, and
  positions still count from 0;
- the output layer runs only where a continuation token is predicted (for Gemma's 262k-word
  vocabulary it costs more than the rest of the model per position).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.model.kv_cache import KVCache, SlidingKVCache
from lmforge.model.transformer import Transformer
from lmforge.runtime import autocast

# A context shared by n requests is run once into a KV cache when that saves at least this many tokens,
# (n - 1) · len(context). The cached context and its continuations are two forward passes of their
# own, each of which reads all the weights: on CPU (gemma-3-270m, bf16) that costs as much as a few
# hundred tokens in a batch row, so below this running the context in every request's row is faster
# (measured: 360 tokens saved a question, 0.84× the speed; 900, 1.25×; 2,400 (10-shot HellaSwag), 2.7×).
REUSE_CONTEXT_TOKENS = 512

Request = tuple[Sequence[int], Sequence[int]]
# A forward row: its input ids, and for each request it scores (first position, targets): position
# first + k predicts targets[k].
Row = tuple[list[int], list[tuple[int, list[int]]]]


def fit_to_window(context: Sequence[int], continuation: Sequence[int], context_length: int) -> tuple[list[int], list[int]]:
    """The request with its context cut from the left so that context + continuation, less the last
    token (which is predicted, never input), fits in `context_length` positions."""
    if not continuation:
        raise LmforgeError("a continuation must hold at least one token")
    if not context:
        raise LmforgeError("a context must hold at least one token (the first continuation token needs something "
                           "to be predicted from: start it with BOS or EOS)")
    if len(continuation) > context_length:
        raise LmforgeError(f"a continuation of {len(continuation)} tokens does not fit the model's window of "
                           f"{context_length}; score it in windows (rolling_windows)")
    excess = max(0, len(context) + len(continuation) - 1 - context_length)
    return list(context[excess:]), list(continuation)


def truncated_count(requests: Sequence[Request], context_length: int) -> int:
    """How many requests `score_continuations` will cut from the left for a model of this window."""
    return sum(len(context) + len(continuation) - 1 > context_length for context, continuation in requests)


def score_continuations(model: Transformer, requests: Sequence[Request], *, batch_size: int = 16,
                        autocast_dtype: torch.dtype | None = None, progress: bool = True,
                        description: str = "scoring") -> list[tuple[float, bool]]:
    """For each (context_ids, continuation_ids): (sum of log P(continuation token | everything before
    it), whether every continuation token is the argmax), in request order. Contexts longer than the
    model's window are cut from the left (see `truncated_count`). `autocast_dtype` (torch.bfloat16)
    runs the model under autocast; log-probabilities are always taken in fp32 and summed in fp64."""
    if batch_size < 1:
        raise LmforgeError(f"batch size must be at least 1, got {batch_size}")
    window = model.config.context_length
    fitted = [fit_to_window(context, continuation, window) for context, continuation in requests]
    by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, (context, _) in enumerate(fitted):
        by_context[tuple(context)].append(index)
    shared, rows, scored_by = [], [], []  # scored_by[r]: the requests row r scores, in its order
    for context, indices in by_context.items():
        if _reuse_pays(context, indices):
            shared.append(indices)
            continue
        for inputs, spans, members in _rows_sharing(list(context), [fitted[index][1] for index in indices]):
            rows.append((inputs, spans))
            scored_by.append([indices[member] for member in members])
    longest_first = sorted(range(len(rows)), key=lambda row: -len(rows[row][0]))

    results: list[tuple[float, bool] | None] = [None] * len(requests)
    bar = tqdm(total=len(requests), desc=description, unit="req", disable=not progress, leave=False)
    was_training = model.training
    model.eval()
    try:
        # no_grad, not inference_mode: inference_mode turns off autocast's cache of cast weights.
        with torch.no_grad(), autocast(model.token_embedding.weight.device, autocast_dtype):
            for start in range(0, len(rows), batch_size):
                batch = longest_first[start:start + batch_size]
                scores = _score_rows(model, [rows[row] for row in batch])
                _store(results, [index for row in batch for index in scored_by[row]], scores, bar)
            for indices in shared:
                context = fitted[indices[0]][0]
                continuations = [fitted[index][1] for index in indices]
                _store(results, indices, _score_from_cached_context(model, context, continuations, batch_size), bar)
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]  # every slot is filled


def rolling_windows(token_ids: Sequence[int], context_length: int) -> list[tuple[list[int], list[int]]]:
    """Requests that together score every token of `token_ids` but the first (the caller's BOS or
    EOS prefix) exactly once, each from as much left context as the window holds: disjoint windows
    of `context_length` predictions, the last one given the full window of context before it
    (lm-eval's `get_rolling_token_windows` with context_len 1, then `make_disjoint_window`)."""
    if len(token_ids) < 2:
        return []
    tokens = list(token_ids)
    windows = []
    for first in range(1, len(tokens), context_length):
        end = min(first + context_length, len(tokens))
        start = max(0, end - 1 - context_length)
        windows.append((tokens[start:first], tokens[first:end]))
    return windows


def rolling_loglikelihood(model: Transformer, token_ids: Sequence[int], *, batch_size: int = 16,
                          autocast_dtype: torch.dtype | None = None, progress: bool = False) -> float:
    """Sum of log P over every token of `token_ids` but the first, which is the prefix the first
    token is conditioned on (BOS or EOS, given by the caller): lm-eval's `loglikelihood_rolling`."""
    windows = rolling_windows(token_ids, model.config.context_length)
    scores = score_continuations(model, windows, batch_size=batch_size, autocast_dtype=autocast_dtype,
                                 progress=progress, description="rolling")
    return sum(score for score, _ in scores)


def _reuse_pays(context: Sequence[int], sharing: Sequence[int]) -> bool:
    return (len(sharing) - 1) * len(context) >= REUSE_CONTEXT_TOKENS


def _rows_sharing(context: list[int], continuations: list[list[int]]) -> list[tuple[list[int], list, list[int]]]:
    """Rows that score every continuation of `context`, with the indices of the continuations each
    scores: a row for each continuation of several tokens; the one-token ones are read from the first
    row at the context's last position, which every row of this context computes (lm-eval's `hf`
    model does the same), so a question of one-token answers costs one row."""
    several = [index for index, continuation in enumerate(continuations) if len(continuation) > 1]
    single = [index for index, continuation in enumerate(continuations) if len(continuation) == 1]
    rows = []
    for number, index in enumerate(several or [None]):
        inputs = context + (continuations[index][:-1] if index is not None else [])
        members = ([] if index is None else [index]) + (single if number == 0 else [])
        rows.append((inputs, [(len(context) - 1, continuations[member]) for member in members], members))
    return rows


def _score_from_cached_context(model: Transformer, context: list[int], continuations: list[list[int]],
                               batch_size: int) -> list[tuple[float, bool]]:
    """All but the context's last token run once into a one-row cache; each batch of continuations
    then runs from copies of it, every row starting with that last token (its prediction is the
    first continuation token's)."""
    capacity = len(context) - 1 + max(map(len, continuations))
    cache = model.new_cache(1, capacity)
    if len(context) > 1:
        model(torch.tensor([context[:-1]], device=model.token_embedding.weight.device), cache)
    scores = []
    for start in range(0, len(continuations), batch_size):
        chunk = continuations[start:start + batch_size]
        rows = [(context[-1:] + continuation[:-1], [(0, continuation)]) for continuation in chunk]
        scores += _score_rows(model, rows, _repeat_rows(model, cache, len(chunk), capacity))
    return scores


def _score_rows(model: Transformer, rows: Sequence[Row],
                cache: list[KVCache | SlidingKVCache] | None = None) -> list[tuple[float, bool]]:
    """Score a right-padded batch of rows, continuing `cache` (one row each) when given: the results
    of every row's requests, row after row."""
    device = model.token_embedding.weight.device
    tokens = torch.zeros(len(rows), max(len(inputs) for inputs, _ in rows), dtype=torch.long)
    row_index, position_index, targets, lengths = [], [], [], []
    for row, (inputs, spans) in enumerate(rows):
        tokens[row, :len(inputs)] = torch.tensor(inputs)
        for first, span_targets in spans:
            row_index += [row] * len(span_targets)
            position_index += range(first, first + len(span_targets))
            targets += span_targets
            lengths.append(len(span_targets))
    logits = _logits_at(model, tokens.to(device), cache, torch.tensor(row_index, device=device),
                        torch.tensor(position_index, device=device))
    token_scores, greedy = _target_scores(logits, torch.tensor(targets, device=device))
    return [(float(scores.sum()), bool(hits.all()))
            for scores, hits in zip(token_scores.double().split(lengths), greedy.split(lengths))]


def _target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(logits)[target] in fp32, and whether the target is the argmax (the first, on a
    tie), for logits [positions, vocab]; a few rows at a time, so no fp32 copy of all logits exists."""
    rows = max(1, (1 << 20) // logits.shape[-1])  # 4 MB of fp32 a chunk stays in cache: twice as fast as 32 MB
    scores, greedy = [], []
    for chunk, chunk_targets in zip(logits.split(rows), targets.split(rows)):
        chunk = chunk.float()
        top = chunk.amax(dim=-1)
        chosen = chunk.gather(1, chunk_targets[:, None])[:, 0]
        hits = chosen == top
        reached = hits.nonzero()[:, 0]  # argmax is ten times slower than amax: only where a tie can matter
        hits[reached] = chunk[reached].argmax(dim=-1) == chunk_targets[reached]
        log_norm = top + chunk.sub_(top[:, None]).exp_().sum(dim=-1).log()  # in place: one exp pass
        scores.append(chosen - log_norm)
        greedy.append(hits)
    return torch.cat(scores), torch.cat(greedy)


def _logits_at(model: Transformer, tokens: torch.Tensor, cache: list[KVCache | SlidingKVCache] | None,
               rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits [len(rows), vocab] at the (row, position) pairs only: a hook hands the output layer just
    those hidden states, so it never runs where no continuation token is predicted."""
    handle = model.norm.register_forward_hook(lambda module, inputs, output: output[rows, positions])
    try:
        return model(tokens, cache)
    finally:
        handle.remove()


def _repeat_rows(model: Transformer, cache: list[KVCache | SlidingKVCache], rows: int,
                 capacity: int) -> list[KVCache | SlidingKVCache]:
    """A `rows`-row cache of `capacity` positions whose every row holds what the one-row `cache` holds."""
    copies = model.new_cache(rows, capacity)
    for copy, layer in zip(copies, cache):
        for target, source in zip(copy.buffers, layer.buffers):
            target.copy_(source.expand_as(target))
        copy.length = layer.length
    return copies


def _store(results: list[tuple[float, bool] | None], indices: Sequence[int], scores: Sequence[tuple[float, bool]],
           bar: tqdm) -> None:
    for index, score in zip(indices, scores):
        results[index] = score
    bar.update(len(indices))
