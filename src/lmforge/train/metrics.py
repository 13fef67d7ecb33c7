"""Metrics: one JSON object a line in metrics.jsonl, mirrored to TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lmforge.atomic import atomic_write_text


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after `last_step` (by a run that died after its last checkpoint), so a
    resumed run's log reads as if it had never stopped. A torn last line is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsLog:
    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # TensorBoard is optional: `pip install tensorboard`
                self.tensorboard = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, record["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
