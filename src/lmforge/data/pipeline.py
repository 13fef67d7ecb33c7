"""`prepare`'s pipeline: the phases, what each task reads and writes, and how a run resumes.

    filter    per task: read, clean and filter (the steps up to dedup in step_order.py);
              writes the kept documents and their dedup keys
    links     per key column and hash shard: documents sharing a key (dedup.py)
    clusters  once: which documents are duplicates; the mixture plan
    tokenizer once: load --tokenizer, or train one on a sample of the kept documents
    tokenize  per task: the remaining steps, dedup, mix and tokenize, into per-task token files
    merge     once: shards, manifest, tokenizer.json, report.json, excluded/*.jsonl.gz

Intermediate files live in `OUT/.prepare/` (work_directory.py lists them) with the run's
fingerprint (recipe + input files' sizes and times); a rerun with the same fingerprint resumes, a
different one starts over. The output of a run does not depend on --workers or the number of
machines: tasks are fixed byte ranges of the input (tasks.py), and every merge is in task order.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_write_text
from lmforge.data.clean import CleanStep
from lmforge.data.dedup import DedupStep, SignatureCollector, duplicate_links, removed_documents
from lmforge.data.document import Document
from lmforge.data.executor import POLL_SECONDS, Executor, distributed_rank
from lmforge.data.filters import ContentStep, GopherQualityStep
from lmforge.data.inputs import list_files
from lmforge.data.language import LANGUAGES, LanguageStep
from lmforge.data.merge import merge_outputs, previous_run
from lmforge.data.mix import MixPlan, MixStep, check_mix, plan_mixture
from lmforge.data.quality import QualityModel, QualityStep
from lmforge.data.readers import Piece, ReadStep
from lmforge.data.recipe import Recipe
from lmforge.data.report import nothing_left
from lmforge.data.repetition import RepetitionStep
from lmforge.data.step import ExclusionWriter, PipelineStep
from lmforge.data.step_order import steps_in_order
from lmforge.data.tasks import plan_tasks
from lmforge.data.tokenize_step import TokenFiles, TokenizeStep
from lmforge.data.work_directory import (
    WORK_DIRECTORY,
    Run,
    fingerprint,
    load_work_tokenizer,
    phase_stats,
    remove_temporary_files,
    save_stats,
)
from lmforge.data.words import tables as word_tables
from lmforge.data.words import unit_interval, with_words
from lmforge.errors import LmforgeError

TOKENIZER_SAMPLE_SEED = 0x70C


def filter_steps(recipe: Recipe) -> list[PipelineStep]:
    """The steps of the filter phase after reading, in step order (built early too, to check the recipe)."""
    steps: list[PipelineStep] = [CleanStep(recipe.clean)]
    if recipe.filters.enabled:
        unknown = [language for language in recipe.filters.languages if language not in LANGUAGES]
        if unknown:
            raise LmforgeError(f"filters.languages: {unknown[0]!r} is not one of {', '.join(LANGUAGES)}")
        steps += [
            LanguageStep(recipe.filters.languages, recipe.filters.min_language_score),
            GopherQualityStep(recipe.filters),
            RepetitionStep(recipe.filters),
            ContentStep(recipe.filters),
        ]
    if recipe.quality.model:
        steps.append(QualityStep(load_quality_model(recipe.quality.model), recipe.quality.min_quality))
    return steps_in_order(steps)


@functools.cache
def load_quality_model(path: str) -> QualityModel:
    return QualityModel.load(path)


def _run_steps(run: Run, task: str, steps: list[PipelineStep], stream, sink) -> None:
    """Drive `stream` through `sink`; commit exclusion files on success, discard them otherwise."""
    for step in steps:
        step.excluded = ExclusionWriter(run.work / "excluded" / step.name / f"{task}.jsonl.gz", run.temporary_suffix)
    try:
        sink(stream)
    except BaseException:
        for step in steps:
            step.excluded.discard()
        raise
    for step in steps:
        step.excluded.commit()


def filter_task(run: Run, task: str, pieces: list[Piece]) -> None:
    recipe = run.recipe
    read = ReadStep(recipe.on_bad_line)
    steps = filter_steps(recipe)
    collector = SignatureCollector(recipe.dedup, run.source_index)
    stream = read.run(pieces)
    stream = steps[0].run(stream)
    stream = with_words(stream)
    for step in steps[1:]:
        stream = step.run(stream)
    stream = collector.run(stream)
    kept = run.work / "kept" / f"{task}.jsonl"
    kept.parent.mkdir(parents=True, exist_ok=True)

    def write_kept(documents) -> None:
        with open(run.temporary(kept), "w", encoding="utf-8") as file:
            for document in documents:
                file.write(json.dumps(document.to_json(), ensure_ascii=False) + "\n")

    try:
        _run_steps(run, task, [read, *steps], stream, write_kept)
        for name, array in (("keys", collector.key_matrix()), ("table", collector.document_table())):
            path = run.work / name / f"{task}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(run.temporary(path), "wb") as file:
                np.save(file, array)
            run.temporary(path).replace(path)
        run.temporary(kept).replace(kept)
    finally:
        run.temporary(kept).unlink(missing_ok=True)
    save_stats(run, "filter", task, [read, *steps])


def kept_documents(run: Run, task: str):
    with open(run.work / "kept" / f"{task}.jsonl", encoding="utf-8") as file:
        for line in file:
            yield Document.from_json(json.loads(line))


def links_task(run: Run, tasks: list[str], offsets: list[int], column: int, shard: int, shards: int) -> None:
    rows = ((offset, np.load(run.work / "keys" / f"{task}.npy", mmap_mode="r")[column]) for task, offset in zip(tasks, offsets))
    path = run.work / "links" / f"{column}-{shard}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(run.temporary(path), "wb") as file:
        np.save(file, duplicate_links(rows, shard, shards))
    run.temporary(path).replace(path)


def clusters_task(run: Run, tasks: list[str], offsets: list[int], columns: list[int]) -> None:
    """Duplicates from all links, then the mixture plan from the characters each source has left."""
    links_directory = run.work / "links"
    exact, near = [np.zeros((0, 2), dtype=np.int64)], [np.zeros((0, 2), dtype=np.int64)]
    for path in sorted(links_directory.glob("*.npy")) if links_directory.exists() else []:
        column = int(path.stem.split("-")[0])
        if column in columns:
            (exact if column == 0 else near).append(np.load(path))
    removed, is_exact = removed_documents(np.concatenate(near), np.concatenate(exact))
    np.save(run.work / "removed.npy", removed)
    np.save(run.work / "removed_exact.npy", is_exact)
    names = [source.name for source in run.recipe.sources]
    available = np.zeros(len(names), dtype=np.int64)
    for task, offset in zip(tasks, offsets):
        table = np.load(run.work / "table" / f"{task}.npy")
        survives = ~np.isin(np.arange(offset, offset + table.shape[1]), removed)
        available += np.bincount(table[1][survives], weights=table[0][survives], minlength=len(names)).astype(np.int64)
    plan = plan_mixture(run.recipe.sources, run.recipe.mix, {name: int(count) for name, count in zip(names, available)})
    atomic_write_text(run.work / "mix.json", json.dumps(plan.to_json()))


def _removed_range(run: Run, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    removed = np.load(run.work / "removed.npy")
    exact = np.load(run.work / "removed_exact.npy")
    low, high = np.searchsorted(removed, [first, first + count])
    return removed[low:high], exact[low:high]


def tokenizer_task(run: Run, tasks: list[str], offsets: list[int], counts: list[int]) -> None:
    """`--tokenizer PATH` is loaded and saved as tokenizer.json; `--vocab-size N` trains one on a
    hash-chosen sample of about `sample_chars` characters of the deduplicated, filtered corpus."""
    from lmforge.tokenizer import load_tokenizer, train_tokenizer

    config = run.recipe.tokenize
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
    else:
        plan = MixPlan.from_json(json.loads((run.work / "mix.json").read_text()))
        fraction = min(1.0, config.sample_chars / max(sum(plan.available.values()), 1))

        def sample():
            for task, offset, count in zip(tasks, offsets, counts):
                removed = set(_removed_range(run, offset, count)[0].tolist())
                for index, document in enumerate(kept_documents(run, task), start=offset):
                    if index not in removed and unit_interval(document.id, TOKENIZER_SAMPLE_SEED) < fraction:
                        yield document.text

        tokenizer = train_tokenizer(sample(), config.vocab_size)
    if tokenizer.eos_id is None:
        raise LmforgeError(f"tokenizer {config.tokenizer} has no end-of-sequence token (<|endoftext|>, </s>, ...); documents need one between them")
    tokenizer.save(run.work / "tokenizer.json")


def tokenize_task(run: Run, task: str, first: int, count: int) -> None:
    from lmforge.data.shards import dtype_for_vocab

    tokenizer = load_work_tokenizer(str(run.work / "tokenizer.json"))
    plan = MixPlan.from_json(json.loads((run.work / "mix.json").read_text()))
    files = TokenFiles(run.work / "tokens", task, dtype_for_vocab(tokenizer.vocab_size), run.temporary_suffix)
    steps = steps_in_order([
        DedupStep(first, *_removed_range(run, first, count)),
        MixStep(plan, run.recipe.mix.seed),
        TokenizeStep(tokenizer, files, run.recipe.tokenize.val_fraction),
    ])
    stream = kept_documents(run, task)
    for step in steps:
        stream = step.run(stream)
    try:
        _run_steps(run, task, steps[:2], stream, lambda documents: sum(1 for _ in documents))
        files.commit()
    except BaseException:
        files.discard()
        raise
    save_stats(run, "tokenize", task, steps)


def prepare_corpus(recipe: Recipe, out: str | Path, workers: int = 1, overwrite: bool = False) -> dict:
    """Run the whole pipeline into `out`; returns the report (also written to out/report.json)."""
    out = Path(out)
    rank, world_size = distributed_rank()
    check_mix(recipe.sources, recipe.mix)
    if not recipe.tokenize.tokenizer and not recipe.tokenize.vocab_size:
        raise LmforgeError("give --tokenizer PATH to use a tokenizer, or --vocab-size N to train one on the cleaned corpus")
    if recipe.tokenize.tokenizer and recipe.tokenize.vocab_size:
        raise LmforgeError("give either --tokenizer or --vocab-size, not both")
    if not 0.0 <= recipe.tokenize.val_fraction < 1.0:
        raise LmforgeError(f"--val-fraction {recipe.tokenize.val_fraction}: must be at least 0 and below 1")
    files = list_files(recipe.sources)
    filter_steps(recipe)  # compiles patterns, loads the quality model: errors before any work starts
    word_tables()  # built once here, inherited by forked workers
    run_fingerprint = fingerprint(recipe, files)
    report = previous_run(out, run_fingerprint, overwrite, remove=rank == 0)
    if report is not None:
        return report
    created_out = not out.exists()
    work = out / WORK_DIRECTORY
    run = Run(recipe, work, f"{uuid.uuid4().hex[:12]}.tmp")
    stamp = work / "fingerprint"
    if rank == 0:
        if not stamp.exists() or stamp.read_text() != run_fingerprint:
            shutil.rmtree(work, ignore_errors=True)
        if world_size == 1 and work.exists():
            remove_temporary_files(work, "tmp")  # left by a killed run
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stamp, run_fingerprint)
    else:
        while not stamp.exists() or stamp.read_text() != run_fingerprint:
            time.sleep(POLL_SECONDS)  # rank 0 clears or creates the work directory first
    tasks = plan_tasks(recipe, files)
    names = [f"{index:05d}" for index in range(len(tasks))]
    try:
        with Executor(work, workers, rank, world_size) as executor:
            executor.run([f"filter-{name}" for name in names], filter_task, [(run, name, pieces) for name, pieces in zip(names, tasks)],
                         [sum(piece.size for piece in pieces) for pieces in tasks], "filter", "B")
            counts = [int(np.load(work / "table" / f"{name}.npy", mmap_mode="r").shape[1]) for name in names]
            if not sum(counts):
                inputs = [path for source in recipe.sources for path in source.paths]
                raise LmforgeError(nothing_left(phase_stats(run, "filter", names), inputs, work / "excluded"))
            offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int).tolist()
            columns = ([0] if recipe.dedup.exact else []) + (list(range(1, recipe.dedup.bands + 1)) if recipe.dedup.near else [])
            shards = max(1, -(-sum(counts) // recipe.dedup.max_documents_per_shard))
            units = [(column, shard) for column in columns for shard in range(shards)]
            executor.run([f"links-{column}-{shard}" for column, shard in units], links_task,
                         [(run, names, offsets, column, shard, shards) for column, shard in units], [1] * len(units), "dedup", "shard")
            executor.run_once("clusters", clusters_task, run, names, offsets, columns)
            executor.run_once("tokenizer", tokenizer_task, run, names, offsets, counts)
            executor.run([f"tokenize-{name}" for name in names], tokenize_task,
                         [(run, name, offset, count) for name, offset, count in zip(names, offsets, counts)], counts, "tokenize", "doc")
        if rank != 0:
            return {}
        report = merge_outputs(run, out, names, run_fingerprint)
    except BaseException:
        remove_temporary_files(work, run.temporary_suffix)
        if rank == 0 and world_size == 1 and not any((work / "done").glob("*")):
            shutil.rmtree(work, ignore_errors=True)  # nothing finished: leave no trace
            if created_out and out.exists() and not any(out.iterdir()):
                out.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report

