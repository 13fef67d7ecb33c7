"""`lmforge eval ppl`: how well a checkpoint predicts held-out text (loss, perplexity, bits per byte)."""

from __future__ import annotations

import dataclasses
import json as json_module
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import numpy as np

    from lmforge.tokenizer import Tokenizer


def ppl(
    checkpoint: Path,
    *,
    data: Path,
    split: str = "val",
    json: bool = False,
    context_length: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: Literal["fp32", "bf16"] = "fp32",
    verify: Literal["sample", "full", "off"] = "sample",
) -> None:
    """Loss, perplexity and bits per byte of a checkpoint on a prepared split or a UTF-8 text file.

    Every token is scored once, by sliding windows of the context length that start every
    --stride tokens; each window scores only the tokens no earlier window scored, so a smaller
    stride gives each prediction more left context (at more compute). The first token of the
    stream has no prediction. A text file is tokenized with the checkpoint's tokenizer.json, with
    EOS put in front (as after the previous document in training), so every token of the text is
    scored. Bits per byte divide the nats by ln 2 times the UTF-8 bytes the scored tokens decode
    to, EOS counting zero bytes; a prepared split is decoded with its own tokenizer.json.

    Example:
        lmforge eval ppl runs/quickstart --data data/quickstart
        lmforge eval ppl runs/quickstart --data data/quickstart --split val --json
        lmforge eval ppl runs/quickstart --data notes.txt --stride 64 --context-length 256
        lmforge eval ppl runs/quickstart --data data/quickstart --max-tokens 100000 --batch-size 16 --device cuda --precision bf16

    Args:
        checkpoint: An lmforge checkpoint directory (config.json, model.safetensors, tokenizer.json).
        data: A prepared-data directory (manifest.json + shards) or a UTF-8 text file.
        split: Which split of a prepared-data directory to score.
        json: Print one JSON object instead of a table.
        context_length: Window length in tokens (default and maximum: the model's context).
        stride: Tokens between window starts, 1..context length (default: the context length, no overlap).
        max_tokens: Score only the first N tokens of the data.
        batch_size: Windows per forward pass.
        device: auto, cpu, cuda, cuda:N.
        precision: fp32, or bf16 autocast for the forward pass (the loss is summed in fp32).
        verify: How the shards are checked against manifest.json before use: sample (sizes, the manifest's
            checksum, 8 hashed 1 MiB blocks per shard), full (every byte hashed), off (sizes only). Every mode
            checks the token ids against the model's vocabulary.
    """
    import torch

    from lmforge.eval.perplexity import check_windows, count_text_bytes, evaluate_perplexity
    from lmforge.model.checkpoint import TOKENIZER_FILE, load_checkpoint, read_config, read_generation
    from lmforge.runtime import resolve_device
    from lmforge.tokenizer import load_tokenizer

    if not checkpoint.exists():
        raise LmforgeError(f"checkpoint {checkpoint} does not exist")
    config = read_config(checkpoint)
    context_length = config.context_length if context_length is None else context_length
    if context_length > config.context_length:
        raise LmforgeError(f"--context-length {context_length} is longer than the model's context ({config.context_length})")
    stride = context_length if stride is None else stride
    check_windows(context_length, stride)
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise LmforgeError(f"--max-tokens must be at least 1, got {max_tokens}")
    # One token more than is scored: the first token is context only.
    limit = None if max_tokens is None else max_tokens + 1

    model_tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE) if (checkpoint / TOKENIZER_FILE).is_file() else None
    if data.is_dir():
        tokens, tokenizer = _prepared_split(data, split, limit, model_tokenizer, verify)
    elif data.is_file():
        if model_tokenizer is None:
            raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; a text file needs the checkpoint's tokenizer to be read")
        start = read_generation(checkpoint).get("bos_token_id", model_tokenizer.eos_id)
        tokens, tokenizer = _text_file(data, model_tokenizer, start, limit), model_tokenizer
    else:
        raise LmforgeError(f"--data {data} does not exist; give a prepared-data directory or a UTF-8 text file")
    if tokens.size < 2:
        raise LmforgeError(f"{data}: {tokens.size} token(s); at least 2 are needed to score one prediction")
    largest = int(tokens.max())
    if largest >= config.vocab_size:
        raise LmforgeError(
            f"{data} holds token id {largest} but {checkpoint}'s vocabulary has {config.vocab_size} ids; "
            "the data was tokenized for another model"
        )

    model = load_checkpoint(checkpoint, resolve_device(device))
    result = evaluate_perplexity(
        model, tokens, context_length, stride, batch_size,
        autocast_dtype=torch.bfloat16 if precision == "bf16" else None, progress=True,
    )
    if not math.isfinite(result.nats):  # finite weights (load_checkpoint checks them), so the forward overflowed
        hint = "; try --precision fp32" if precision == "bf16" else ""
        raise LmforgeError(f"{checkpoint}: the loss on {data} is not finite ({result.nats}): the forward pass overflows{hint}")
    result = dataclasses.replace(result, bytes=count_text_bytes(tokenizer, tokens[1:]))

    if json:
        report = {**result.to_dict(), "context_length": context_length, "stride": stride}
        print(json_module.dumps(report, indent=2, allow_nan=False))
        return
    bits_per_byte = "n/a (no bytes)" if result.bits_per_byte is None else f"{result.bits_per_byte:.4f}"
    print(f"data           {data}" + (f" (split {split})" if data.is_dir() else ""))
    print(f"windows        context {context_length}, stride {stride}")
    print(f"tokens         {result.tokens:,} scored, {result.bytes:,} bytes")
    print(f"loss           {result.loss:.4f} nats/token")
    print(f"perplexity     {result.perplexity:.3f}")
    print(f"bits per byte  {bits_per_byte}")


def _prepared_split(data: Path, split: str, limit: int | None, model_tokenizer: Tokenizer | None,
                    verify: str) -> tuple[np.ndarray, Tokenizer]:
    """The split's tokens (the first `limit`) as one array, and the tokenizer they were made with."""
    import numpy as np

    from lmforge.data.shards import DTYPES, read_manifest
    from lmforge.data.verify import shard_files
    from lmforge.tokenizer import load_tokenizer

    manifest = read_manifest(data)
    paths = shard_files(data, manifest, split, verify=verify)
    tokenizer_path = data / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise LmforgeError(
            f"{data}: no tokenizer.json; bits per byte need the tokenizer its ids belong to (re-run `lmforge prepare`)"
        )
    tokenizer = load_tokenizer(tokenizer_path)
    if model_tokenizer is not None and tokenizer.backend.get_vocab() != model_tokenizer.backend.get_vocab():
        raise LmforgeError(f"{tokenizer_path} differs from the checkpoint's tokenizer; prepare the data with the model's tokenizer")
    pieces = []
    remaining = limit
    for path, count in paths:
        if count == 0:
            continue
        shard = np.memmap(path, dtype=DTYPES[manifest["dtype"]], mode="r")
        pieces.append(shard if remaining is None else shard[:remaining])
        if remaining is not None:
            remaining -= len(pieces[-1])
            if remaining == 0:
                break
    if not pieces:
        raise LmforgeError(f"{data}: split {split!r} holds no tokens; prepare more data or choose another split")
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), tokenizer


def _text_file(path: Path, tokenizer: Tokenizer, start: int | None, limit: int | None) -> np.ndarray:
    """Token ids of the file's text after `start` — the BOS a model's prompts begin with (Gemma,
    Llama), else EOS, as after a previous document — so the text's first token is scored too.

    Special-token strings in the text are read as plain text, as `prepare` reads documents.
    """
    import numpy as np

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LmforgeError(f"{path}: not UTF-8 (byte {error.start}); convert the file to UTF-8 first") from None
    if not text.strip():
        raise LmforgeError(f"{path} is empty; give a text file with something to score")
    ids = tokenizer.encode(text, allowed_special=False)
    if start is not None:
        ids = [start, *ids]
    return np.asarray(ids[:limit], dtype=np.int64)
