"""The last phase: per-task results become the prepared-data directory.

Token files are laid out split by split, pass by pass, task by task into shards (so a document
seen twice lands a whole pass apart); exclusion files are concatenated (gzip members chain into
one valid file); stats become report.json. Every file is renamed into place, and manifest.json,
written last, is what makes the directory count as prepared.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_file
from lmforge.data.mix import MixPlan
from lmforge.data.report import build_report
from lmforge.data.step_order import in_step_order
from lmforge.data.work_directory import Run, load_work_tokenizer, phase_stats
from lmforge.errors import LmforgeError

OUTPUT_GLOBS = ("manifest.json", "train-*.bin", "val-*.bin", "tokenizer.json", "report.json", "excluded")


def previous_run(out: Path, fingerprint: str, overwrite: bool, remove: bool = True) -> dict | None:
    """The report of a finished run with this fingerprint (nothing to do), or None to go ahead.
    A finished run of another recipe or other inputs is only replaced with `overwrite`; with
    several ranks, rank 0 alone removes it (`remove`)."""
    if not (out / "manifest.json").exists():
        return None
    report_path = out / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    if report.get("fingerprint") == fingerprint:
        return report
    if not overwrite:
        raise LmforgeError(
            f"{out} already holds prepared data from other inputs or another recipe; pass --overwrite to replace it, or choose another --out"
        )
    if remove:
        (out / "manifest.json").unlink()  # first, so a half-removed directory never looks prepared
        for pattern in OUTPUT_GLOBS:
            for path in out.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


def _write_split(run: Run, out: Path, tasks: list[str], split: str, tokenizer, dtype: np.dtype) -> list[dict]:
    from lmforge.data.shards import ShardWriter

    directory = run.work / "tokens"
    passes = sorted({int(path.name.split(".")[2]) for path in directory.glob(f"*.{split}.*.bin")}) if directory.exists() else []
    with ShardWriter(out, split, dtype, eos_id=tokenizer.eos_id, shard_tokens=run.recipe.tokenize.shard_tokens) as writer:
        for epoch_pass in passes:
            for task in tasks:
                tokens_path = directory / f"{task}.{split}.{epoch_pass}.bin"
                if not tokens_path.exists():
                    continue
                tokens = np.fromfile(tokens_path, dtype=dtype)
                ends = np.cumsum(np.load(directory / f"{task}.{split}.{epoch_pass}.lengths.npy"))
                for start, end in zip(np.concatenate(([0], ends[:-1])), ends):
                    writer.add_document(tokens[start:end])
        return writer.close()


def _merge_excluded(run: Run, out: Path, tasks: list[str]) -> dict[str, str]:
    """One gzip file per step, in step order; returns step -> relative path."""
    directory = run.work / "excluded"
    merged = {}
    for step in in_step_order(path.name for path in directory.iterdir() if path.is_dir()) if directory.exists() else []:
        parts = [directory / step / f"{task}.jsonl.gz" for task in tasks]
        parts = [part for part in parts if part.exists()]
        if not parts:
            continue
        target = out / "excluded" / f"{step}.jsonl.gz"
        with atomic_file(target) as temporary, open(temporary, "wb") as file:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, file)
        merged[step] = f"excluded/{step}.jsonl.gz"
    return merged


def merge_outputs(run: Run, out: Path, tasks: list[str], fingerprint: str) -> dict:
    from lmforge.data.shards import build_manifest, dtype_for_vocab, write_manifest

    tokenizer = load_work_tokenizer(str(run.work / "tokenizer.json"))
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    splits = {split: _write_split(run, out, tasks, split, tokenizer, dtype) for split in ("train", "val")}
    excluded = _merge_excluded(run, out, tasks)
    tokenizer.save(out / "tokenizer.json")
    stats = {**phase_stats(run, "filter", tasks), **phase_stats(run, "tokenize", tasks)}
    manifest = build_manifest(dtype=dtype, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, splits=splits)
    plan = MixPlan.from_json(json.loads((run.work / "mix.json").read_text()))
    report = build_report(stats, plan, manifest, excluded, fingerprint=fingerprint, recipe=dataclasses.asdict(run.recipe))
    report = json.loads(json.dumps(report, ensure_ascii=False))  # what report.json holds (integer keys become strings)
    with atomic_file(out / "report.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_manifest(out, manifest)
    return report
