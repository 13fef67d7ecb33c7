"""Learning-rate schedules at the steps where their formulas are easy to evaluate by hand:
linear warmup to the peak, cosine to lr × min_lr_ratio, warmup-stable-decay's plateau and linear
decay, and constant."""

from __future__ import annotations

import math

import pytest

from lmforge.train.config import TrainConfig
from lmforge.train.schedule import learning_rate

PEAK, FLOOR = 1e-3, 1e-4  # min_lr_ratio 0.1


def _config(**fields) -> TrainConfig:
    return TrainConfig(**{"lr": PEAK, "min_lr_ratio": 0.1, "warmup_steps": 10, "steps": 110, **fields})


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_warmup_rises_linearly_to_the_peak(schedule):
    config = _config(schedule=schedule)
    # step s (0-based) trains at peak · (s + 1) / warmup: never at zero, the peak on the last warmup step
    assert learning_rate(0, config) == pytest.approx(PEAK / 10)
    assert learning_rate(4, config) == pytest.approx(PEAK * 5 / 10)
    assert learning_rate(9, config) == pytest.approx(PEAK)
    warmup = [learning_rate(step, config) for step in range(10)]
    assert all(later > earlier for earlier, later in zip(warmup, warmup[1:]))


def test_cosine_from_peak_through_the_midpoint_to_the_floor():
    config = _config()  # 100 steps of decay after 10 of warmup
    assert learning_rate(10, config) == pytest.approx(PEAK)
    assert learning_rate(35, config) == pytest.approx(FLOOR + 0.5 * (PEAK - FLOOR) * (1 + math.cos(math.pi / 4)))
    assert learning_rate(60, config) == pytest.approx((PEAK + FLOOR) / 2)
    assert learning_rate(109, config) == pytest.approx(FLOOR + 0.5 * (PEAK - FLOOR) * (1 + math.cos(math.pi * 0.99)))
    assert learning_rate(110, config) == pytest.approx(FLOOR)
    assert learning_rate(1000, config) == pytest.approx(FLOOR)  # past the end: held at the floor
    decay = [learning_rate(step, config) for step in range(10, 111)]
    assert all(later < earlier for earlier, later in zip(decay, decay[1:]))


def test_cosine_without_warmup_starts_at_the_peak_and_zero_ratio_ends_at_zero():
    config = _config(warmup_steps=0, min_lr_ratio=0.0, steps=50)
    assert learning_rate(0, config) == pytest.approx(PEAK)
    assert learning_rate(25, config) == pytest.approx(PEAK / 2)
    assert learning_rate(50, config) == 0.0


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    config = _config(schedule="wsd", steps=100, decay_fraction=0.2)  # decay over steps 80..99
    assert [learning_rate(step, config) for step in (10, 50, 79)] == [PEAK] * 3
    assert learning_rate(80, config) == pytest.approx(PEAK + (FLOOR - PEAK) * 1 / 20)
    assert learning_rate(89, config) == pytest.approx((PEAK + FLOOR) / 2)
    assert learning_rate(99, config) == pytest.approx(FLOOR)  # the last step trains at the floor
    assert learning_rate(150, config) == pytest.approx(FLOOR)


def test_wsd_run_can_be_extended_before_its_decay():
    """Until the shorter run's decay starts, a longer run's rates are the same: its checkpoint
    from the plateau can continue as the longer run."""
    short, long = _config(schedule="wsd", steps=100), _config(schedule="wsd", steps=300)
    assert [learning_rate(step, short) for step in range(80)] == [learning_rate(step, long) for step in range(80)]
    assert learning_rate(90, short) < learning_rate(90, long) == PEAK


def test_wsd_decays_over_at_least_one_step():
    config = _config(schedule="wsd", warmup_steps=0, steps=4, decay_fraction=0.01)  # round(0.04) = 0 → 1 step
    assert [learning_rate(step, config) for step in range(4)] == pytest.approx([PEAK, PEAK, PEAK, FLOOR])


def test_constant_holds_the_peak_after_warmup():
    config = _config(schedule="constant")
    assert {learning_rate(step, config) for step in range(10, 500, 7)} == {PEAK}
