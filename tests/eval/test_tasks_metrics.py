"""Task metrics against explicit arithmetic and, where installed, lm-evaluation-harness's own."""

from __future__ import annotations

import math
import statistics

import pytest

from lmforge.eval.tasks.metrics import choice_metrics, cloze_metrics, mean_and_stderr


def test_stderr_is_the_sample_standard_error():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    mean, stderr = mean_and_stderr(values)
    assert mean == pytest.approx(5 / 7)
    assert stderr == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert mean_and_stderr([1.0]) == (1.0, None)


def test_matches_lm_eval_aggregations():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    values = [1.0, 0.0, 0.0, 1.0, 1.0]
    assert mean_and_stderr(values)[1] == pytest.approx(metrics.mean_stderr(values))
    loglikelihoods = [-2.0, -0.5, -7.25]
    assert cloze_metrics(loglikelihoods, [True, True, False])["perplexity"] == pytest.approx(metrics.perplexity(loglikelihoods))


def test_acc_norm_divides_by_characters_and_acc_norm_tokens_by_tokens():
    # Choice 0 is likelier; per character choice 1 is (-12/20 > -10/5); per token choice 0 again (-10/2 > -12/1).
    metrics = choice_metrics([1, 1], [[-10.0, -12.0], [-10.0, -12.0]], characters=[[5, 20], [5, 20]], tokens=[[2, 1], [2, 1]])
    assert (metrics["acc"], metrics["acc_norm"], metrics["acc_norm_tokens"]) == (0.0, 1.0, 0.0)
    assert metrics["acc_stderr"] == 0.0 and metrics["acc_norm_stderr"] == 0.0


def test_ties_go_to_the_first_choice():
    assert choice_metrics([0, 1], [[-1.0, -1.0], [-1.0, -1.0]])["acc"] == 0.5
    assert set(choice_metrics([0], [[-1.0, -2.0]])) == {"acc", "acc_stderr"}


def test_cloze_accuracy_is_the_greedy_flag_and_perplexity_the_exponent():
    metrics = cloze_metrics([-1.0, -3.0], [True, False])
    assert metrics["acc"] == 0.5 and metrics["perplexity"] == pytest.approx(math.exp(2.0))
    assert cloze_metrics([-1e6], [False])["perplexity"] == math.inf
