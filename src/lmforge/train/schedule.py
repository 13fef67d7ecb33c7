"""Learning-rate schedules: linear warmup, then cosine decay, warmup-stable-decay, or constant."""

from __future__ import annotations

import math

from lmforge.train.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """The rate for optimizer step `step` (0-based)."""
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return peak
    if config.schedule == "wsd":
        # Warmup-stable-decay (MiniCPM, Hu et al. 2024): hold the peak, then decay linearly over
        # the last decay_fraction of training — a run can be extended before its decay starts.
        decay_start = config.steps - max(1, round(config.decay_fraction * config.steps))
        if step < decay_start:
            return peak
        progress = (step - decay_start + 1) / (config.steps - decay_start)
        return peak + (floor - peak) * min(1.0, progress)
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
