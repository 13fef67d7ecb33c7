"""A run's curves as PNG files, drawn from its metrics.jsonl: training loss with validation loss
overlaid (loss.png), and the learning-rate schedule (lr.png).

Figures are drawn on matplotlib's Agg canvas without pyplot, so nothing needs a display and no
global plotting state is touched; each PNG is written under a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.atomic import atomic_file
from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclasses.dataclass(frozen=True)
class MetricsFile:
    """The records of a metrics.jsonl, and the line number of a torn last line that was skipped."""

    records: list[dict]
    torn_line: int | None = None


@dataclasses.dataclass(frozen=True)
class Series:
    steps: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.steps)


def read_metrics(path: Path) -> MetricsFile:
    """Parse metrics.jsonl. A last line that is not valid JSON is what a run killed mid-write
    leaves, so it is skipped; a bad line anywhere else means the file is damaged."""
    if not path.is_file():
        raise LmforgeError(f"{path} does not exist; give a run directory that `lmforge pretrain` or `finetune` wrote")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records: list[dict] = []
    torn_line = None
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if index == len(numbered) - 1:
                torn_line = number
                break
            raise LmforgeError(f"{path}:{number}: not valid JSON ({error.msg}); the metrics file is damaged") from None
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise LmforgeError(f"{path}:{number}: expected a JSON object with an integer \"step\", got {line[:80]!r}")
        records.append(record)
    if not records:
        raise LmforgeError(f"{path} holds no metrics yet; plot after the run has logged a step")
    return MetricsFile(records, torn_line)


def metric_series(records: list[dict], key: str) -> Series:
    """`key` by step, in step order. A step logged twice (a resumed run repeating steps after its
    last checkpoint) keeps its last value. Infinities become gaps (NaN), which matplotlib skips."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            by_step[record["step"]] = float(value) if math.isfinite(value) else math.nan
    steps = sorted(by_step)
    return Series(steps, [by_step[step] for step in steps])


def plot_loss(train: Series, validation: Series, path: Path, title: str) -> None:
    figure, axes = _figure(title)
    if len(train):
        axes.plot(train.steps, train.values, linewidth=1.0, color="tab:blue", label="train loss")
    if len(validation):
        axes.plot(validation.steps, validation.values, marker="o", markersize=4, linewidth=1.0,
                  color="tab:orange", label="validation loss")
    axes.set_ylabel("loss (nats/token)")
    axes.legend()
    _save(figure, path)


# Curves of the figures some objectives log: (file, y label, metric keys drawn when present)
FIGURE_PLOTS = (
    ("reward.png", "reward (mean over a rollout)", ("reward",)),
    ("kl.png", "KL to the reference (per response)", ("kl",)),
    ("rewards.png", "implicit reward β·log(π/π_ref)", ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                      "val_rewards/margins")),
    ("accuracy.png", "accuracy", ("rewards/accuracies", "val_rewards/accuracies", "accuracy", "val_accuracy")),
)


def plot_series(series: list[tuple[str, Series]], path: Path, title: str, ylabel: str) -> None:
    """Several named series on one axes (validation ones with markers)."""
    figure, axes = _figure(title)
    for name, values in series:
        validation = name.startswith("val_")
        axes.plot(values.steps, values.values, linewidth=1.0, label=name,
                  **({"marker": "o", "markersize": 4} if validation else {}))
    axes.set_ylabel(ylabel)
    axes.legend()
    _save(figure, path)


def plot_learning_rate(learning_rate: Series, path: Path, title: str) -> None:
    figure, axes = _figure(title)
    axes.plot(learning_rate.steps, learning_rate.values, linewidth=1.2, color="tab:green")
    axes.set_ylabel("learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _save(figure, path)


def _figure(title: str) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: Path) -> None:
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png")
