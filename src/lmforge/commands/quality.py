"""`lmforge quality train`: the learned quality classifier that `prepare --quality-model` uses."""

from __future__ import annotations

from lmforge.data.recipe import CleanConfig, OnBadLine, ReadConfig


def train(
    *,
    positive: list[str],
    negative: list[str],
    out: str,
    val_fraction: float = 0.2,
    dimensions: int = 1 << 18,
    l2: float = 1e-4,
    on_bad_line: OnBadLine = "error",
    read: ReadConfig = ReadConfig(),
    clean: CleanConfig = CleanConfig(),
) -> dict:
    """Train a quality classifier from examples of good and bad text, and report held-out precision and recall.

    A logistic regression over hashed word unigrams, bigrams and character trigrams (Han characters count
    as words, so Chinese needs no segmenter), like GPT-3's filter. Examples are read like `prepare` reads
    (.txt/.jsonl/.json/.parquet, compressed or not) and cleaned with the same settings, so the scores match
    what `prepare` sees. The model is a safetensors file with the metrics in its metadata.

    Example:
        lmforge quality train --positive curated.jsonl --negative crawl.jsonl --out quality.safetensors
        lmforge quality train --positive good/ --negative 'bad/*.txt' --read.unit line --out quality.safetensors --val-fraction 0.1

    Args:
        positive: Files, directories or globs of good text (repeat the option for more).
        negative: Files, directories or globs of text to filter out.
        out: The model file to write (.safetensors).
        val_fraction: Share of examples held out to measure precision and recall.
        dimensions: Size of the hashed feature space.
        l2: L2 regularisation strength.
        on_bad_line: `error` stops at a malformed line naming file and line; `skip` drops it.
        read: How files become examples (.txt unit, JSON text field, encoding).
        clean: Text normalisation, as in `prepare`.
    """
    import sys

    from lmforge.data.clean import Cleaner
    from lmforge.data.document import Document
    from lmforge.data.quality import train_classifier
    from lmforge.data.readers import read_paths
    from lmforge.errors import LmforgeError

    if not 0.0 <= val_fraction < 1.0:
        raise LmforgeError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    cleaner = Cleaner(clean)

    def examples(paths: list[str], label: str) -> list[Document]:
        documents = []
        for document in read_paths(paths, read, label, on_bad_line):
            document.text = cleaner.clean(document.text)
            if document.text:
                documents.append(document)
        return documents

    positives, negatives = examples(positive, "positive"), examples(negative, "negative")
    print(f"training on {len(positives):,} positive and {len(negatives):,} negative examples", file=sys.stderr)
    model = train_classifier(positives, negatives, val_fraction=val_fraction, dimensions=dimensions, l2=l2)
    model.save(out)
    metrics = model.metrics
    print(f"{'split':<10}{'examples':>10}{'precision':>11}{'recall':>9}{'f1':>8}{'accuracy':>10}")
    for split in ("train", "heldout"):
        if f"{split}_precision" in metrics:
            print(
                f"{split:<10}{metrics[f'{split}_examples']:>10,}{metrics[f'{split}_precision']:>11.3f}{metrics[f'{split}_recall']:>9.3f}"
                f"{metrics[f'{split}_f1']:>8.3f}{metrics[f'{split}_accuracy']:>10.3f}"
            )
    print(f"wrote {out}", file=sys.stderr)
    return metrics
