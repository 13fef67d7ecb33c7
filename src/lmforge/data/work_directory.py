"""The working-directory contract of `prepare`: what lives in `OUT/.prepare/` and who reads it.

    fingerprint                  the run's fingerprint; a rerun with another one starts over
    kept/<task>.jsonl            documents the filter phase kept        (filter -> tokenizer, tokenize)
    keys/<task>.npy              their dedup keys, one row a key column  (filter -> links)
    table/<task>.npy             their characters and source index      (filter -> clusters)
    links/<column>-<shard>.npy   pairs of documents sharing a key        (links -> clusters)
    removed.npy, removed_exact.npy, mix.json                            (clusters -> tokenizer, tokenize, merge)
    tokenizer.json               the tokenizer every id belongs to      (tokenizer -> tokenize, merge)
    tokens/<task>.<split>.<pass>.bin, .lengths.npy                     (tokenize -> merge)
    excluded/<step>/<task>.jsonl.gz   dropped documents                 (filter, tokenize -> merge)
    stats/<phase>-<task>.json    each step's counts                     (filter, tokenize -> merge)
    done/<task>                  the executor's completion markers

It is a module of its own because the phases (pipeline.py) write it and the merge (merge.py)
reads it: both import it, neither imports the other.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

from lmforge.atomic import atomic_write_text
from lmforge.data.inputs import InputFile
from lmforge.data.recipe import Recipe
from lmforge.data.step import PipelineStep, StepStats

WORK_DIRECTORY = ".prepare"


@dataclasses.dataclass
class Run:
    """What every task needs to know: the recipe, where intermediate files go, and the suffix of
    this process's temporary files (so a failure can remove exactly its own)."""

    recipe: Recipe
    work: Path
    temporary_suffix: str

    @property
    def source_index(self) -> dict[str, int]:
        return {source.name: index for index, source in enumerate(self.recipe.sources)}

    def temporary(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.{self.temporary_suffix}")


def fingerprint(recipe: Recipe, files: list[InputFile]) -> str:
    """Identifies what a run computes: the recipe and the state of every file it reads."""
    assets = [recipe.tokenize.tokenizer, recipe.quality.model, recipe.filters.banned_words_file]
    stamps = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in [f.path for f in files] + [a for a in assets if a]
              if os.path.exists(path)]
    payload = json.dumps({"recipe": dataclasses.asdict(recipe), "files": stamps}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.cache
def load_work_tokenizer(path: str):
    from lmforge.tokenizer import load_tokenizer

    return load_tokenizer(path)


def save_stats(run: Run, phase: str, task: str, steps: list[PipelineStep]) -> None:
    record = {step.name: step.stats.to_json() for step in steps}
    atomic_write_text(run.work / "stats" / f"{phase}-{task}.json", json.dumps(record))


def phase_stats(run: Run, phase: str, tasks: list[str]) -> dict[str, StepStats]:
    """Each step's counts over all tasks of a phase."""
    merged: dict[str, StepStats] = {}
    for task in tasks:
        record = json.loads((run.work / "stats" / f"{phase}-{task}.json").read_text())
        for name, stats in record.items():
            merged.setdefault(name, StepStats()).merge(StepStats.from_json(stats))
    return merged


def remove_temporary_files(directory: Path, suffix: str) -> None:
    if directory.exists():
        for path in directory.rglob(f"*.{suffix}"):
            path.unlink(missing_ok=True)
