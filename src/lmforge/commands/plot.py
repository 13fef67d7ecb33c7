"""`lmforge plot`: a run's loss and learning-rate curves as PNG files."""

from __future__ import annotations

import sys
from pathlib import Path

from lmforge.errors import LmforgeError


def plot(run: Path, *, out: Path | None = None) -> None:
    """Draw a run's loss and learning-rate curves (loss.png, lr.png) from its metrics.jsonl.

    loss.png shows the training loss with the validation loss overlaid; lr.png the learning rate.
    Runs that log more get more: PPO reward.png and kl.png, DPO rewards.png (implicit rewards and
    margins), DPO, reward-model and classification runs accuracy.png.
    It works on a run still training: a torn last line is skipped with a warning, and a step
    logged twice (a resumed run) keeps its last value.

    Example:
        lmforge plot runs/quickstart
        lmforge plot runs/quickstart --out reports/quickstart

    Args:
        run: A run directory holding metrics.jsonl (or the metrics.jsonl file itself).
        out: Directory for the PNG files (default: the run directory).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LmforgeError("plotting needs matplotlib: pip install matplotlib") from None
    from lmforge.train.plot import FIGURE_PLOTS, metric_series, plot_learning_rate, plot_loss, plot_series, read_metrics

    metrics_path = run if run.is_file() else run / "metrics.jsonl"
    out = out if out is not None else metrics_path.parent
    metrics = read_metrics(metrics_path)
    if metrics.torn_line is not None:
        print(f"lmforge: warning: {metrics_path}:{metrics.torn_line}: skipped a torn last line "
              "(the run stopped mid-write)", file=sys.stderr)
    title = metrics_path.parent.resolve().name
    train, validation = metric_series(metrics.records, "loss"), metric_series(metrics.records, "val_loss")
    learning_rate = metric_series(metrics.records, "lr")
    if not len(train) and not len(validation):
        raise LmforgeError(f"{metrics_path} has no \"loss\" or \"val_loss\" values to plot")
    plot_loss(train, validation, out / "loss.png", title)
    print(out / "loss.png")
    if len(learning_rate):
        plot_learning_rate(learning_rate, out / "lr.png", title)
        print(out / "lr.png")
    else:
        print(f"lmforge: warning: {metrics_path} logs no \"lr\"; lr.png not written", file=sys.stderr)
    for name, ylabel, keys in FIGURE_PLOTS:
        series = [(key, metric_series(metrics.records, key)) for key in keys]
        series = [(key, values) for key, values in series if len(values)]
        if series:
            plot_series(series, out / name, title, ylabel)
            print(out / name)
