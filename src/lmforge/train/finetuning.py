"""Fine-tuning jobs: a checkpoint's weights as the start, examples with loss masks (sft) or labels
(classify) as the data, and the parameters a method trains — all of them, LoRA, bottleneck
adapters or prefixes. They run on the one training loop, like pretraining."""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lmforge.data.examples import (
    ChatExample,
    ExampleBatches,
    LabeledBatches,
    read_examples,
    read_labeled,
    split_by_hash,
    tokenize_examples,
    tokenize_labeled,
)
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.model.accounting import model_cost
from lmforge.model.checkpoint_directory import (
    TOKENIZER_FILE,
    build_model,
    load_weights,
    read_config,
    read_generation,
    write_checkpoint,
)
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.peft import (
    applied_method,
    apply_peft,
    base_fingerprint,
    base_state,
    save_adapter,
    trainable_report,
)
from lmforge.quant.apply import (
    build_quantized,
    cast_floats,
    quantize_model,
    read_quantization,
    save_quantized,
)
from lmforge.quant.qat import apply_qat
from lmforge.quant.schemes import QuantScheme
from lmforge.tokenizer import Tokenizer, load_tokenizer
from lmforge.train.chat_format import chat_format, template_tokens
from lmforge.train.config import TrainConfig
from lmforge.train.job import TrainingJob
from lmforge.train.objectives.classification import (
    Classification,
    attach_head,
    save_head,
    select_trainable,
    validation_figures,
)
from lmforge.train.objectives.next_token import NextToken


@dataclass
class FinetuneOptions:
    """What a fine-tune decides beyond the loop's settings (see `lmforge finetune --help`)."""

    method: Literal["full", "lora", "adapter", "prefix"] = "full"
    peft_config: object | None = None  # LoraConfig, AdapterConfig or PrefixConfig for the method
    train_on: Literal["completion", "prompt+completion", "last-turn"] = "completion"
    pack: bool = True
    val_fraction: float = 0.05
    on_bad_row: Literal["error", "skip"] = "error"
    merge: bool = True
    trainable: Literal["head", "last-k-blocks", "all"] = "all"
    last_blocks: int = 2
    qat: Literal["int8", "int4"] | None = None  # quantization-aware training, converted at the end
    qat_group_size: int = 32
    qat_start_step: int = 0
    qat_activations: Literal["none", "int8"] = "none"  # with qat int8: w8a8, inputs fake-quantized too
    notes: list[str] = field(default_factory=list)  # decisions reported to the user (vocabulary grown, truncations)


def load_base(checkpoint: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer, dict]:
    """(config, weights, tokenizer, generation.json) of the starting checkpoint."""
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; fine-tuning reads text, so the checkpoint needs its tokenizer")
    config = read_config(checkpoint)
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    if tokenizer.vocab_size > config.vocab_size:
        raise LmforgeError(f"{checkpoint / TOKENIZER_FILE} has {tokenizer.vocab_size:,} token ids but the model "
                           f"{config.vocab_size:,}; this tokenizer belongs to another model")
    return config, load_weights(checkpoint), tokenizer, read_generation(checkpoint)


def _starting_model(config: ModelConfig, state: dict, checkpoint: Path, options: FinetuneOptions, seed: int,
                    before_method: Callable[[Transformer], None] | None = None) -> tuple[Transformer, str | None]:
    """The base with fp32 master weights (whatever dtype the checkpoint stores), the method applied,
    and the base's fingerprint for adapter.json (None for full fine-tuning). `before_method` sees
    the base alone (a preference job's reference is taken from it)."""
    quantization = read_quantization(checkpoint)
    if quantization is None:
        model = build_model(config, state, str(checkpoint), dtype=torch.float32)
    else:  # QLoRA: the integer layers stay frozen as stored; the method trains fp32 weights around them
        if options.method == "full":
            raise LmforgeError(f"{checkpoint} is quantized ({quantization['scheme']}); its integer weights cannot be trained: "
                               "fine-tune it with --method lora, adapter or prefix, or fine-tune the full-precision "
                               "checkpoint (with --qat to keep it accurate once quantized)")
        model = cast_floats(build_quantized(config, quantization, state, str(checkpoint)), torch.float32)
        options.notes.append(f"the base is quantized ({quantization['scheme']}): its integer layers stay frozen and the "
                             f"{options.method} weights are saved beside them as an adapter (never merged into the codes)")
    state.clear()  # the model holds its own copy now
    fingerprint = base_fingerprint(config, base_state(model)) if options.method != "full" else None
    if before_method is not None:
        before_method(model)
    _apply_method(model, options, seed)
    return model, fingerprint


def _apply_method(model: Transformer, options: FinetuneOptions, seed: int | None = None) -> None:
    if seed is not None:  # a method's new weights (LoRA's A, a head) start the same in every run and rank
        torch.manual_seed(seed)
    if options.method != "full":
        apply_peft(model, options.method, options.peft_config)


def _identity(config: ModelConfig, options: FinetuneOptions, **more) -> dict:
    peft = dataclasses.asdict(options.peft_config) if options.method != "full" else None
    return {"model_config": config.to_dict(), "method": options.method, "peft_config": peft, **more}


def sft_job(checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, topology: Topology,
            options: FinetuneOptions) -> TrainingJob:
    """Instruction / chat fine-tuning: the next-token loss on the supervised tokens only."""
    config, state, tokenizer, generation = load_base(checkpoint)
    examples, report = read_examples(data, on_bad_row=options.on_bad_row)
    _note_skipped(report, options)
    template = None
    if any(isinstance(example, ChatExample) for example in examples):
        config, tokenizer, generation, template = chat_format(config, state, tokenizer, generation, options.notes)
    context_length = _context_length(train, config)
    tokenized = tokenize_examples(examples, tokenizer, template, train_on=options.train_on, **template_tokens(tokenizer, generation))
    train_examples, val_examples = split_by_hash(tokenized, options.val_fraction)
    if not train_examples:
        raise LmforgeError(f"{', '.join(map(str, data))}: no training example is left after the validation split; "
                           "give more examples or a smaller --val-fraction")
    reading = dict(context_length=context_length, pack=options.pack, rank=topology.dp_rank,
                   world_size=topology.dp_degree, pad_id=tokenizer.eos_id or 0)
    train_batches = ExampleBatches(train_examples, shuffle=True, seed=train.seed, **reading)
    val_batches = ExampleBatches(val_examples, shuffle=False, seed=0, **reading) if val_examples else None
    if train_batches.truncated:
        options.notes.append(f"{train_batches.truncated} of {len(train_examples)} training examples were longer than "
                             f"{context_length + 1} tokens and were cut (a larger --train.context_length keeps them)")
    options.notes.append(f"{len(train_examples)} training and {len(val_examples)} validation examples in "
                         f"{len(train_batches)} rows ({'packed' if options.pack else 'padded'}), "
                         f"{train_batches.supervised_tokens:,} supervised tokens")
    model, fingerprint = _starting_model(config, state, checkpoint, options, train.seed)
    tokenizer_path = _save_tokenizer(tokenizer, out, topology)

    save_model = _saver(options, fingerprint, checkpoint, tokenizer_path, generation, val_batches or train_batches)
    return TrainingJob(
        "finetune", model, config, NextToken(), train_batches, val_batches, tokenizer_path, context_length,
        generation=generation, identity=_identity(config, options), save_model=save_model,
        rebuild=lambda: _rebuilt(config, options), frozen_base=options.method != "full",
        before_step=_quantization_aware(model, options),
    )


def classify_job(checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, topology: Topology,
                 options: FinetuneOptions) -> TrainingJob:
    """Classification: a head on the hidden state of each text's last token, cross-entropy."""
    config, state, tokenizer, generation = load_base(checkpoint)
    rows, report = read_labeled(data, on_bad_row=options.on_bad_row)
    _note_skipped(report, options)
    labels = sorted({row.label for row in rows})
    if len(labels) < 2:
        raise LmforgeError(f"{', '.join(map(str, data))}: classification needs at least two labels, found {labels}")
    context_length = _context_length(train, config)
    train_rows, val_rows = split_by_hash(rows, options.val_fraction)
    untrained = sorted(set(labels) - {row.label for row in train_rows})
    if untrained:
        count = sum(row.label == untrained[0] for row in val_rows)
        raise LmforgeError(f"label {untrained[0]!r} occurs only in the validation split ({count} row{'s' * (count != 1)}), "
                           "so nothing would teach it; give more examples of it or a smaller --val-fraction")
    train_ids, truncated = tokenize_labeled(train_rows, tokenizer, labels, context_length)
    val_ids, _ = tokenize_labeled(val_rows, tokenizer, labels, context_length)
    if truncated:
        options.notes.append(f"{truncated} of {len(train_rows)} training texts were longer than {context_length} tokens: "
                             "their first tokens are kept")
    options.notes.append(f"{len(train_rows)} training and {len(val_rows)} validation texts; labels: {', '.join(labels)}")
    pad_id = tokenizer.eos_id or 0
    reading = dict(rank=topology.dp_rank, world_size=topology.dp_degree, pad_id=pad_id)
    train_batches = LabeledBatches(train_ids, shuffle=True, seed=train.seed, **reading)
    val_batches = LabeledBatches(val_ids, shuffle=False, seed=0, **reading) if val_ids else None
    whole_val = LabeledBatches(val_ids, shuffle=False, seed=0, pad_id=pad_id) if val_ids else None  # rank 0 reads it all

    model, fingerprint = _starting_model(config, state, checkpoint, options, train.seed)
    head = attach_head(model, labels)
    if options.method == "full":
        select_trainable(model, options.trainable, options.last_blocks)
    tokenizer_path = _save_tokenizer(tokenizer, out, topology)

    save_model = _saver(options, fingerprint, checkpoint, tokenizer_path, generation, val_batches or train_batches,
                        lambda model, directory: save_head(model.classifier, labels, directory))

    def validate(model: Transformer) -> dict:
        if whole_val is None:
            return {}
        return validation_figures(model, model.classifier, whole_val, train.eval_batches, train.micro_batch_size)

    return TrainingJob(
        "finetune", model, config, Classification(head), train_batches, val_batches, tokenizer_path, context_length,
        generation=generation, identity=_identity(config, options, labels=labels), save_model=save_model,
        rebuild=lambda: _rebuilt(config, options, labels), validate=validate, frozen_base=options.trainable != "all"
        or options.method != "full",
        before_step=_quantization_aware(model, options),
        # The head replaces the output layer: its 6 × vocab × d_model FLOPs a token are not spent.
        flops_per_token=model_cost(config, context_length=context_length).flops_per_token - 6 * config.vocab_size * config.d_model,
    )


def _saver(options: FinetuneOptions, fingerprint: str | None, checkpoint: Path, tokenizer: Path, generation: dict,
           batches, write_head: Callable[[Transformer, Path], None] | None = None):
    """How a fine-tune writes its checkpoint directory: the adapter (adapter.json says whether it
    is merged) and a head's files (`write_head`: a classifier's, a reward model's); the weights — at the end, unless --merge false, with LoRA
    folded in. A method's base weights never change, so they are written once a run (a gigabyte
    for Gemma), and later saves write only the adapter."""
    base_written = False

    def save_model(model: Transformer, directory: Path, final: bool) -> None:
        nonlocal base_written
        if final and options.qat is not None:  # the real quantized layers of what QAT trained
            converted = copy.deepcopy(model)
            quantize_model(converted, _qat_scheme(options))
            if write_head is not None:
                write_head(model, directory)
            save_quantized(converted, directory, tokenizer, generation)
            return
        quantization = getattr(model, "quantization", None)
        merge = final and options.merge and applied_method(model) == "lora" and quantization is None
        if applied_method(model) is not None:
            save_adapter(model, directory, options.method, options.peft_config, fingerprint, str(checkpoint), merge)
        if write_head is not None:
            write_head(model, directory)
        if merge or options.method == "full" or not base_written:
            weights = merged_state(model, batches) if merge else base_state(model)
            weights = {name: tensor for name, tensor in weights.items() if not name.startswith(HEAD_PREFIXES)}
            write_checkpoint(model.config, weights, directory, tokenizer, generation, quantization=quantization)
            base_written = not merge

    return save_model


def _quantization_aware(model: Transformer, options: FinetuneOptions) -> Callable[[int], None] | None:
    """With --qat: fake-quantized layers, switched on from --qat-start-step (the loop's `before_step`)."""
    if options.qat is None:
        if options.qat_start_step or options.qat_group_size != 32 or options.qat_activations != "none":
            raise LmforgeError("--qat-start-step, --qat-group-size and --qat-activations need --qat int8|int4")
        return None
    if options.qat_start_step < 0:
        raise LmforgeError(f"--qat-start-step must be at least 0, got {options.qat_start_step}")
    if options.method != "full":
        raise LmforgeError(f"--qat trains the weights that will be quantized: use it with --method full, not {options.method}")
    scheme = _qat_scheme(options)
    switch = apply_qat(model, scheme)
    detail = {"int4": f" (groups of {options.qat_group_size})", "int8": " with int8 inputs (w8a8)" if scheme.activations == "int8" else ""}
    options.notes.append(f"quantization-aware training: {options.qat}{detail[options.qat]} from step "
                         f"{options.qat_start_step}; the final checkpoint is quantized")
    return lambda step: switch.at_step(step, options.qat_start_step)


def _qat_scheme(options: FinetuneOptions) -> QuantScheme:
    if options.qat_activations != "none" and options.qat != "int8":
        raise LmforgeError(f"--qat-activations {options.qat_activations} goes with --qat int8 (w8a8), not --qat {options.qat}")
    return QuantScheme(options.qat, options.qat_group_size, activations=options.qat_activations)


def _rebuilt(config: ModelConfig, options: FinetuneOptions, labels: Sequence[str] | None = None) -> Transformer:
    """The job's module structure (base, method, head), for a sharded run's rank 0 to read into."""
    model = Transformer(config)
    _apply_method(model, options)
    if labels is not None:
        attach_head(model, labels)
    return model


def _context_length(train: TrainConfig, config: ModelConfig) -> int:
    if train.context_length and train.context_length > config.context_length:
        raise LmforgeError(f"--train.context_length {train.context_length} exceeds the model's context_length {config.context_length}")
    return train.context_length or config.context_length


def _note_skipped(report, options: FinetuneOptions) -> None:
    if report.skipped:
        rows = "row" if report.skipped == 1 else "rows"
        options.notes.append(f"skipped {report.skipped} bad {rows} of {report.rows + report.skipped} "
                             f"(first: {report.first_errors[0]})")


def _save_tokenizer(tokenizer: Tokenizer, out: Path, topology: Topology) -> Path:
    """The fine-tune's tokenizer (grown by a chat template's tokens, perhaps) in --out, copied into
    every checkpoint from there."""
    if topology.is_main:
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)
    topology.barrier()
    return out / TOKENIZER_FILE


@torch.no_grad()
def merged_state(model: Transformer, batches) -> dict[str, torch.Tensor]:
    """The base weights with LoRA folded in, leaving the training model as it is; prints how far
    the merged model's logits are from the unmerged ones on a validation batch (rounding only)."""
    state = base_state(model)
    for name, module in model.named_modules():
        update = getattr(module, "lora_update", None)
        if update is not None:
            delta = module.lora_B.weight.float() @ module.lora_A.weight.float() * update.scale
            state[f"{name}.weight"] = (module.weight.float() + delta).to(module.weight.dtype)
    device = model.token_embedding.weight.device
    batch = {key: value.to(device) for key, value in batches.next_batch(1).items()}
    extra = {key: batch[key] for key in ("positions", "segments") if key in batch}
    merged = build_model(model.config, {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}, "merged", device)
    was_training = model.training
    model.eval()
    difference = (merged.eval()(batch["inputs"], **extra) - model(batch["inputs"], **extra)).abs().max().item()
    model.train(was_training)
    print(f"LoRA merged into model.safetensors: max |logit difference| merged vs unmerged {difference:.2e}", file=sys.stderr)
    return state


JOBS = {"sft": sft_job, "classify": classify_job}
HEAD_PREFIXES = ("classifier.", "value_head.")  # modules a job adds that model.safetensors does not hold


def launch_finetuning(checkpoint: Path, data: Sequence[Path], out: Path, task: str, train: TrainConfig, parallel,
                      options: FinetuneOptions, resume: bool, build: Callable[..., TrainingJob] | None = None):
    """Check the inputs, join the processes under torchrun, build the job (`JOBS[task]`, or
    `build`, which takes the same arguments) and run it; the result on rank 0, None on the others."""
    from lmforge.train.launch import joined_processes
    from lmforge.train.loop import run_job
    from lmforge.train.trainer import check_run_directory

    if not (checkpoint / "config.json").is_file():
        raise LmforgeError(f"{checkpoint}: not a checkpoint directory (no config.json)")
    if out.resolve() == checkpoint.resolve() or out.resolve().is_relative_to(checkpoint.resolve()):
        raise LmforgeError(f"--out {out} is inside the starting checkpoint {checkpoint}; choose a directory outside it")
    if parallel.tp > 1 or parallel.pp > 1:
        raise LmforgeError("fine-tuning runs data-parallel only (--parallel.dp_replicate / --parallel.dp_shard); "
                           "--parallel.tp and --parallel.pp must be 1")
    check_run_directory(out, resume)  # before the job writes the tokenizer into --out
    if task not in ("classify", "reward") and options.trainable != "all":
        raise LmforgeError(f"--trainable is for classifiers and reward models; with {task} choose what trains with --method")
    with joined_processes(parallel, train.device) as topology:
        job = (build or JOBS[task])(checkpoint, data, out, train, topology, options)
        if topology.is_main:
            for note in options.notes:
                print(note, file=sys.stderr)
            if options.method != "full":
                print(trainable_report(job.model, options.method), file=sys.stderr)
        return run_job(job, out, train, resume, parallel=parallel, topology=topology)
