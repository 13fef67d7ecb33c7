"""`lmforge prepare`: raw text to a prepared-data directory (token shards, tokenizer, report)."""

from __future__ import annotations

import dataclasses
import sys

from lmforge.data.recipe import (
    CleanConfig,
    DedupConfig,
    FilterConfig,
    MixConfig,
    OnBadLine,
    QualityConfig,
    ReadConfig,
    Recipe,
    Source,
    TokenizeConfig,
)


def prepare(
    *,
    input: list[str] | None = None,
    out: str,
    sources: list[Source] | None = None,
    tokenizer: str | None = None,
    vocab_size: int | None = None,
    workers: int = 1,
    val_fraction: float = 0.005,
    quality_model: str | None = None,
    min_quality: float = 0.5,
    on_bad_line: OnBadLine = "error",
    overwrite: bool = False,
    shard_tokens: int = 100_000_000,
    tokenizer_sample_chars: int = 50_000_000,
    read: ReadConfig = ReadConfig(),
    clean: CleanConfig = CleanConfig(),
    filters: FilterConfig = FilterConfig(),
    dedup: DedupConfig = DedupConfig(),
    mix: MixConfig = MixConfig(),
) -> dict:
    """Clean, filter, deduplicate, mix and tokenize a corpus into token shards for pretraining.

    Reads .txt, .jsonl, .json and .parquet files (optionally .gz or .zst), then: cleans (NFKC, markup,
    control characters, regex substitutions, boilerplate lines), filters by rules (Gopher quality and
    repetition rules, language, banned words, ads) and optionally by a learned quality model, removes
    exact and near duplicates (MinHash LSH) across all sources, mixes named sources by weight or
    epochs, and writes train/val shards, tokenizer.json, report.json and excluded/<step>.jsonl.gz.
    A killed run resumes where it stopped; with RANK/WORLD_SIZE (or Slurm) set, machines share the work.

    Example:
        lmforge prepare --input corpus/ --out data --vocab-size 8000
        lmforge prepare --input news=zh.txt --input chat=en.jsonl --out data --tokenizer tok.json --mix.weights '{news: 0.7, chat: 0.3}'
        lmforge prepare --config configs/prepare/peoples_daily.yaml --out data --workers 4

    Args:
        input: Files, directories or globs to read; `NAME=PATH` names the source (repeat the option).
        out: The prepared-data directory to write.
        sources: Named sources with `name`, `paths` and `weight` or `epochs` (usually from --config).
        tokenizer: An existing tokenizer (tokenizer.json, a directory, vocab.json+merges.txt, *.tiktoken).
        vocab_size: Train a byte-level BPE tokenizer of this size on a sample of the cleaned corpus.
        workers: Processes to run tasks on.
        val_fraction: Share of documents held out for validation, chosen by a hash of their id.
        quality_model: A classifier from `lmforge quality train`; documents scoring below --min-quality are dropped.
        min_quality: Lowest quality score kept (0 to 1).
        on_bad_line: `error` stops at a malformed line naming file and line; `skip` drops and counts it
            (and leaves out a damaged .gz/.zst file whole, with a warning in the report).
        overwrite: Replace a prepared directory made from other inputs or another recipe.
        shard_tokens: Tokens per shard file at most.
        tokenizer_sample_chars: Characters of the corpus sampled to train the tokenizer.
        read: How files become documents (.txt unit, JSON text field, encoding, task size).
        clean: Text normalisation.
        filters: Rule-based filters and their thresholds (null turns a rule off).
        dedup: Exact and MinHash near-duplicate removal.
        mix: Source weights or epochs, total size and seed.
    """
    from lmforge.data.inputs import resolve_sources
    from lmforge.data.pipeline import prepare_corpus
    from lmforge.data.report import format_report

    recipe = Recipe(
        sources=resolve_sources(list(input or []), [dataclasses.replace(source, paths=list(source.paths)) for source in sources or []]),
        read=read,
        clean=clean,
        filters=filters,
        quality=QualityConfig(model=quality_model, min_quality=min_quality),
        dedup=dedup,
        mix=mix,
        tokenize=TokenizeConfig(
            tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction, shard_tokens=shard_tokens, sample_chars=tokenizer_sample_chars
        ),
        on_bad_line=on_bad_line,
    )
    report = prepare_corpus(recipe, out, workers=workers, overwrite=overwrite)
    if report:
        print(format_report(report))
        print(f"wrote {out} (report.json has the details; dropped documents are in {out}/excluded/)", file=sys.stderr)
    return report
