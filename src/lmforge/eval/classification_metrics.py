"""Classification metrics on label indices: accuracy, macro-F1 and the confusion matrix.

Pure functions on plain sequences of ints (a label's index in the fine-tune's label list), so the
training loop's validation and any later evaluation compute the same numbers. Macro-F1 follows
scikit-learn's `f1_score(average="macro")`: the mean of per-class F1 over the classes that occur
in the truth or in the predictions; a class absent from both has no F1 (0/0) and is left out of
the mean rather than counted as 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence


def _check(truth: Sequence[int], predicted: Sequence[int]) -> None:
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    if not truth:
        raise ValueError("no examples to measure")
    if min(truth) < 0 or min(predicted) < 0:
        raise ValueError("label indices must not be negative")


def accuracy(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """The share of examples whose prediction is the true label."""
    _check(truth, predicted)
    return sum(true == guess for true, guess in zip(truth, predicted)) / len(truth)


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], n_labels: int) -> list[list[int]]:
    """counts[true][predicted] over `n_labels` classes: row i holds the examples whose true label is i."""
    _check(truth, predicted)
    if max(max(truth), max(predicted)) >= n_labels:
        raise ValueError(f"a label index is not below n_labels={n_labels}")
    counts = [[0] * n_labels for _ in range(n_labels)]
    for true, guess in zip(truth, predicted):
        counts[true][guess] += 1
    return counts


def macro_f1(truth: Sequence[int], predicted: Sequence[int]) -> float:
    """The unweighted mean of per-class F1 = 2·TP / (2·TP + FP + FN), over the classes present in
    the truth or the predictions (absent ones are left out), so a rare class weighs as much as a
    common one."""
    counts = confusion_matrix(truth, predicted, max(max(truth, default=0), max(predicted, default=0)) + 1)
    scores = []
    for label, row in enumerate(counts):
        # 2·TP + FP + FN is the row sum (TP + FN) plus the column sum (TP + FP).
        support = sum(row) + sum(other[label] for other in counts)
        if support:
            scores.append(2 * row[label] / support)
    return sum(scores) / len(scores)
