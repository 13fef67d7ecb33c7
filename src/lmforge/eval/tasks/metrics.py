"""Task metrics, as lm-evaluation-harness computes them.

- `acc`: the choice of highest log-likelihood is the right one;
- `acc_norm`: the same after dividing each log-likelihood by the choice's length in characters
  (the harness's acc_norm);
- `acc_norm_tokens`: divided by its length in tokens instead (what the GPT-3 paper normalised by;
  it depends on the tokenizer, so it does not compare across models);
- `*_stderr`: the sample standard error of the mean, sqrt(sample variance / n) (the harness's);
- cloze tasks: `acc` is whether a greedy decode writes the whole target, and `perplexity` is
  exp(-mean log-likelihood of the target), the harness's LAMBADA perplexity.
Ties go to the first choice, as numpy's argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and its standard error; None for the error of a single value."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, None
    variance = sum((value - mean) ** 2 for value in values) / (count - 1)
    return mean, math.sqrt(variance / count)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda index: (values[index], -index))


def _with_stderr(name: str, hits: Sequence[float]) -> dict[str, float | None]:
    mean, stderr = mean_and_stderr(hits)
    return {name: mean, f"{name}_stderr": stderr}


def choice_metrics(golds: Sequence[int], loglikelihoods: Sequence[Sequence[float]],
                   characters: Sequence[Sequence[int]] | None = None,
                   tokens: Sequence[Sequence[int]] | None = None) -> dict[str, float | None]:
    """acc (and acc_norm, acc_norm_tokens when the choices' lengths are given) with standard errors."""
    metrics = _with_stderr("acc", [float(_argmax(scores) == gold) for gold, scores in zip(golds, loglikelihoods)])
    for name, lengths in (("acc_norm", characters), ("acc_norm_tokens", tokens)):
        if lengths is not None:
            hits = [float(_argmax([score / length for score, length in zip(scores, sizes)]) == gold)
                    for gold, scores, sizes in zip(golds, loglikelihoods, lengths)]
            metrics |= _with_stderr(name, hits)
    return metrics


def cloze_metrics(loglikelihoods: Sequence[float], greedy: Sequence[bool]) -> dict[str, float | None]:
    metrics = _with_stderr("acc", [float(hit) for hit in greedy])
    mean_loglikelihood = sum(loglikelihoods) / len(loglikelihoods)
    try:
        metrics["perplexity"] = math.exp(-mean_loglikelihood)
    except OverflowError:
        metrics["perplexity"] = math.inf
    return metrics
