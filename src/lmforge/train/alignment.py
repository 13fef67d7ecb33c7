"""Alignment jobs on the one training loop: a reward model trained on preference pairs
(InstructGPT's second stage) and DPO, which trains the policy on the same pairs directly. They
are fine-tuning jobs with another objective and another kind of example: a checkpoint's weights
as the start, the method's trainable parameters (full, LoRA, adapters, prefixes), the same saving."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lmforge.data.examples import split_by_hash
from lmforge.data.examples.preferences import (
    PairBatches,
    read_preferences,
    tokenize_pairs,
)
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.runtime import autocast, resolve_precision
from lmforge.train.chat_format import chat_format, template_tokens
from lmforge.train.config import TrainConfig
from lmforge.train.finetuning import (
    FinetuneOptions,
    _context_length,
    _identity,
    _note_skipped,
    _rebuilt,
    _save_tokenizer,
    _saver,
    _starting_model,
    load_base,
)
from lmforge.train.job import TrainingJob
from lmforge.train.objectives.classification import (
    ClassificationHead,
    attach_head,
    read_head,
    select_trainable,
    write_head_files,
)
from lmforge.train.objectives.preference import (
    DPO,
    DpoLoss,
    PairwiseReward,
    sequence_log_probs,
)

REWARD_FORMAT = "lmforge.reward.v1"
REWARD_WEIGHTS_FILE = "reward_head.safetensors"
REWARD_CONFIG_FILE = "reward.json"


@dataclass
class AlignOptions(FinetuneOptions):
    """A fine-tune's options and the preference ones (see `lmforge align dpo --help`)."""

    beta: float = 0.1
    loss: DpoLoss = "sigmoid"
    logps: Literal["sum", "mean"] | None = None  # None: sum for sigmoid, mean for ipo
    max_prompt_tokens: int | None = None


def _pairs(checkpoint: Path, data: Sequence[Path], train: TrainConfig, topology: Topology, options: AlignOptions):
    """(config, state, tokenizer, generation, context length, train batches, val batches) of a
    preference job; the decisions taken on the pairs go to `options.notes`."""
    config, state, tokenizer, generation = load_base(checkpoint)
    examples, report = read_preferences(data, on_bad_row=options.on_bad_row)
    _note_skipped(report, options)
    template = None
    if any(example.is_chat for example in examples):
        config, tokenizer, generation, template = chat_format(config, state, tokenizer, generation, options.notes)
    context_length = _context_length(train, config)
    pairs, decisions = tokenize_pairs(examples, tokenizer, template, context_length=context_length,
                                      max_prompt_tokens=options.max_prompt_tokens, **template_tokens(tokenizer, generation))
    train_pairs, val_pairs = split_by_hash(pairs, options.val_fraction)
    if not train_pairs:
        raise LmforgeError(f"{', '.join(map(str, data))}: no training pair is left (after dropping "
                           f"{decisions.identical + decisions.identical_after_cut + decisions.empty} and the validation "
                           "split); give more pairs or a smaller --val-fraction")
    options.notes += decisions.lines(len(pairs))
    options.notes.append(f"{len(train_pairs)} training and {len(val_pairs)} validation pairs")
    reading = dict(rank=topology.dp_rank, world_size=topology.dp_degree, pad_id=tokenizer.eos_id or 0)
    train_batches = PairBatches(train_pairs, shuffle=True, seed=train.seed, **reading)
    val_batches = PairBatches(val_pairs, shuffle=False, seed=0, **reading) if val_pairs else None
    return config, state, tokenizer, generation, context_length, train_batches, val_batches


@torch.no_grad()
def reference_log_probs(model, batches: PairBatches, batch_size: int, precision: str, device: torch.device,
                        average: bool, progress: bool = True) -> torch.Tensor:
    """[pairs, 2] log-probabilities of each pair's chosen and rejected response under `model`
    (in eval mode, at the training precision, on `device`; the model is left on the CPU)."""
    from tqdm import tqdm

    model.to(device).eval()
    values = torch.empty(len(batches), 2, dtype=torch.float64)
    try:
        bar = tqdm(batches.in_order(batch_size), total=-(-len(batches) // batch_size), desc="reference log-probabilities",
                   unit="batch", dynamic_ncols=True, disable=not progress, leave=False)
        for indices, batch in bar:
            with autocast(device, precision):
                logps = sequence_log_probs(model, {key: value.to(device) for key, value in batch.items()}, average)
            chosen, rejected = logps.double().cpu().chunk(2)
            values[indices, 0], values[indices, 1] = chosen, rejected
    finally:
        model.train().to("cpu")
    return values


def dpo_job(checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, topology: Topology,
            options: AlignOptions) -> TrainingJob:
    """DPO: the policy starts from `checkpoint`; the reference is the same weights, frozen, whose
    log-probabilities of every pair are computed once before training (one model in memory)."""
    config, state, tokenizer, generation, context_length, train_batches, val_batches = _pairs(
        checkpoint, data, train, topology, options)
    average = (options.logps or ("mean" if options.loss == "ipo" else "sum")) == "mean"
    precision = resolve_precision(train.precision, topology.device)

    def compute_reference(base) -> None:  # before the method: prefix tuning does not start from the base's function
        for batches in filter(None, (train_batches, val_batches)):
            batches.set_reference(reference_log_probs(base, batches, train.micro_batch_size, precision, topology.device,
                                                      average, progress=topology.is_main))

    model, fingerprint = _starting_model(config, state, checkpoint, options, train.seed, before_method=compute_reference)
    options.notes.append(f"reference log-probabilities of {len(train_batches) + len(val_batches or ())} pairs computed "
                         f"({'mean' if average else 'sum'} over response tokens)")
    tokenizer_path = _save_tokenizer(tokenizer, out, topology)
    identity = _identity(config, options, beta=options.beta, loss=options.loss, average=average)
    return TrainingJob(
        "dpo", model, config, DPO(options.beta, options.loss, average), train_batches, val_batches, tokenizer_path,
        context_length, generation=generation, identity=identity,
        save_model=_saver(options, fingerprint, checkpoint, tokenizer_path, generation, val_batches or train_batches),
        rebuild=lambda: _rebuilt(config, options), frozen_base=options.method != "full",
    )


def reward_job(checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, topology: Topology,
               options: AlignOptions) -> TrainingJob:
    """A reward model: a scalar head on each sequence's last token, trained so the chosen response
    scores above the rejected one (Bradley–Terry)."""
    config, state, tokenizer, generation, context_length, train_batches, val_batches = _pairs(
        checkpoint, data, train, topology, options)
    model, fingerprint = _starting_model(config, state, checkpoint, options, train.seed)
    head = attach_head(model, ["reward"])
    if options.method == "full":
        select_trainable(model, options.trainable, options.last_blocks)
    tokenizer_path = _save_tokenizer(tokenizer, out, topology)
    return TrainingJob(
        "reward", model, config, PairwiseReward(head), train_batches, val_batches, tokenizer_path, context_length,
        generation=generation, identity=_identity(config, options, head="reward"),
        save_model=_saver(options, fingerprint, checkpoint, tokenizer_path, generation, val_batches or train_batches,
                          lambda model, directory: save_reward_head(model.classifier, directory)),
        rebuild=lambda: _with_head(_rebuilt(config, options)),
        frozen_base=options.trainable != "all" or options.method != "full",
    )


def _with_head(model):
    attach_head(model, ["reward"])
    return model


def save_reward_head(head: ClassificationHead, directory: Path) -> None:
    """reward_head.safetensors, then reward.json (written last: its presence means both are complete)."""
    write_head_files(head, directory / REWARD_WEIGHTS_FILE, directory / REWARD_CONFIG_FILE,
                     {"format": REWARD_FORMAT, "pooling": "last-token"})


ALIGN_JOBS = {"dpo": dpo_job, "reward": reward_job}


def launch_alignment(kind: str, checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, parallel,
                     options: AlignOptions, resume: bool):
    from lmforge.train.finetuning import launch_finetuning

    if not options.beta > 0:
        raise LmforgeError(f"--beta must be positive, got {options.beta}")
    return launch_finetuning(checkpoint, data, out, kind, train, parallel, options, resume, build=ALIGN_JOBS[kind])


def load_reward_model(directory: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """(model, head, tokenizer, generation.json) of a reward model written by `lmforge align reward`."""
    from lmforge.model.checkpoint_directory import (
        TOKENIZER_FILE,
        read_config,
        read_generation,
    )
    from lmforge.peft import load_finetuned
    from lmforge.tokenizer import load_tokenizer

    directory = Path(directory)
    config_path, weights_path = directory / REWARD_CONFIG_FILE, directory / REWARD_WEIGHTS_FILE
    if not config_path.is_file():
        raise LmforgeError(f"{directory}: not a reward model (no {REWARD_CONFIG_FILE}); train one with lmforge align reward")
    try:
        settings = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LmforgeError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(settings, dict) or settings.get("format") != REWARD_FORMAT:
        raise LmforgeError(f"{config_path}: not a reward model config (format should be {REWARD_FORMAT!r})")
    if not weights_path.is_file():
        raise LmforgeError(f"{weights_path}: missing, though {REWARD_CONFIG_FILE} is there; train the reward model again")
    head = read_head(weights_path, 1, read_config(directory).d_model, "a scalar reward")
    model = load_finetuned(directory, device, dtype)
    model.eval()
    return model, head.to(device).eval(), load_tokenizer(directory / TOKENIZER_FILE), read_generation(directory)


@torch.no_grad()
def score_sequences(model, head: ClassificationHead, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[float]:
    """The reward of each token sequence (prompt + response), in order; sequences are batched by
    length, right-padded (padding cannot change a score: the head reads each one's last token)."""
    device = head.weight.device
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    scores = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = torch.zeros(len(chunk), max(len(sequences[index]) for index in chunk), dtype=torch.long)
        for row, index in enumerate(chunk):
            inputs[row, :len(sequences[index])] = torch.as_tensor(list(sequences[index]), dtype=torch.long)
        last = torch.tensor([len(sequences[index]) - 1 for index in chunk], device=device)
        values = head(model(inputs.to(device), hidden_states=True), last).squeeze(-1).tolist()
        for index, value in zip(chunk, values):
            scores[index] = value
    return scores
