"""`lmforge classify`: label texts with a classification fine-tune (`lmforge finetune --task classify`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError


def _read_lines(path: Path) -> list[str]:
    """One text a line (UTF-8, a BOM and CRLF line ends allowed); an empty line is an error."""
    if not path.exists():
        raise LmforgeError(f"{path}: no such file; give a text file, one text a line")
    if path.is_dir():
        raise LmforgeError(f"{path}: is a directory; give a text file, one text a line")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LmforgeError(f"{path}: unreadable ({error.strerror})") from None
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise LmforgeError(f"{path}:{line}: not UTF-8 text ({error.reason}); save the file as UTF-8") from None
    # Split on "\n" only: a text may hold other Unicode line separators.
    lines = [line.removesuffix("\r") for line in content.removesuffix("\n").split("\n")] if content else []
    if not lines:
        raise LmforgeError(f"{path}: no texts; write one text a line")
    for number, line in enumerate(lines, start=1):
        if not line:
            raise LmforgeError(f"{path}:{number}: empty line; write one text a line, none empty")
    return lines


SORTED_BATCHES = 16  # batches of texts sorted by length together, with --file


def classify(
    checkpoint: Path,
    *,
    text: str | None = None,
    file: Path | None = None,
    json: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
) -> None:
    """Print the label of a text, with every label's probability, from a classification fine-tune.

    --text prints the label and a table of probabilities (one JSON object with --json); --file
    classifies one text a line and prints JSON lines, one object a text, in order. A text longer
    than the model's context keeps its first tokens (a count of such texts goes to stderr). Texts
    are batched right-padded and read at their last real token, so a text gets the same answer
    alone or in any batch.

    Example:
        lmforge classify runs/sentiment --text "A moving, beautifully acted film."
        lmforge classify runs/sentiment --text "Two hours I will not get back." --json
        lmforge classify runs/sentiment --file reviews.txt --batch-size 64 > predictions.jsonl
        lmforge classify runs/sentiment --file reviews.txt --precision fp32 --device cpu

    Args:
        checkpoint: A classification fine-tune: a checkpoint directory with classifier.json and classifier.safetensors.
        text: One text to classify.
        file: A UTF-8 text file, one text a line: prints one JSON object a line, {"label", "probabilities"}.
        json: Print {"label": ..., "probabilities": {label: p}} for --text instead of a table.
        batch_size: Texts run through the model at once with --file.
        device: auto, cpu, cuda, cuda:N.
        precision: The model's dtype for inference; auto: bf16 where the hardware computes it natively
            (GPUs, CPUs with AMX / AVX512-BF16), else fp32. The head always computes in fp32.
    """
    from json import dumps

    from tqdm import tqdm

    from lmforge.bounds import at_least, check_value
    from lmforge.errors import warn
    from lmforge.model.checkpoint_directory import TOKENIZER_FILE
    from lmforge.runtime import DTYPES, resolve_device, resolve_precision
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.objectives.classification import load_classification_checkpoint, padded_batches, predict

    if (text is None) == (file is None):
        raise LmforgeError("give exactly one of --text TEXT or --file FILE")
    check_value("--batch-size", batch_size, at_least(1))
    if not checkpoint.is_dir():
        raise LmforgeError(f"{checkpoint}: no such checkpoint directory")
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; a checkpoint needs its tokenizer to read texts")
    texts = [text] if file is None else _read_lines(file)
    places = ["--text"] if file is None else [f"{file}:{number}" for number in range(1, len(texts) + 1)]

    torch_device = resolve_device(device)
    dtype = DTYPES[resolve_precision(precision, torch_device)]
    model, head, labels = load_classification_checkpoint(checkpoint, torch_device, dtype)
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise LmforgeError(
            f"{checkpoint / TOKENIZER_FILE} has {tokenizer.vocab_size:,} token ids but the model has "
            f"{model.config.vocab_size:,}; this tokenizer belongs to another model: put the model's own tokenizer.json in the checkpoint"
        )
    rows = tokenizer.encode_batch(texts)
    empty = next((place for place, ids in zip(places, rows) if not ids), None)
    if empty is not None:
        raise LmforgeError(f"{empty}: the text is empty; give a text to classify")
    context = model.config.context_length
    truncated = sum(len(ids) > context for ids in rows)
    if truncated:
        warn(f"{truncated} of {len(rows)} text(s) are longer than the model's context ({context} tokens); "
             f"each was read up to its first {context} tokens")
    rows = [ids[:context] for ids in rows]

    def result(probabilities: list[float]) -> dict:
        best = max(range(len(labels)), key=probabilities.__getitem__)
        return {"label": labels[best], "probabilities": dict(zip(labels, probabilities))}

    if file is None:
        answer = result(predict(model, head, padded_batches(rows, 1))[0].tolist())
        if json:
            print(dumps(answer, ensure_ascii=False))
            return
        width = max(len("label"), *map(len, labels))
        print(f"label: {answer['label']}")
        print(f"{'label':<{width}}  probability")
        for label, probability in sorted(answer["probabilities"].items(), key=lambda item: -item[1]):
            print(f"{label:<{width}}  {probability:11.4f}")
        return

    # A window of texts at a time, batched in order of length (so a batch pads little), printed in
    # file order: output streams, and padding cannot change an answer.
    window = batch_size * SORTED_BATCHES
    with tqdm(total=len(rows), desc="classify", unit="text", disable=None, file=sys.stderr) as progress:
        for start in range(0, len(rows), window):
            chunk = rows[start:start + window]
            order = sorted(range(len(chunk)), key=lambda index: len(chunk[index]))
            answers: list[dict | None] = [None] * len(chunk)
            for first in range(0, len(order), batch_size):
                indices = order[first:first + batch_size]
                for index, probabilities in zip(indices, predict(model, head, padded_batches([chunk[i] for i in indices],
                                                                                               batch_size)).tolist()):
                    answers[index] = result(probabilities)
                progress.update(len(indices))
            sys.stdout.write("".join(dumps(answer, ensure_ascii=False) + "\n" for answer in answers))
            sys.stdout.flush()
