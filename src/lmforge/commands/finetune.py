"""`lmforge finetune`: continue training a checkpoint on instruction / chat examples or labelled
texts, fully or with a parameter-efficient method, on the same loop as pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lmforge.peft import AdapterConfig, LoraConfig, PrefixConfig
from lmforge.train.config import ParallelConfig, TrainConfig

FINETUNE_TRAIN = TrainConfig(steps=200, micro_batch_size=8, lr=1e-4, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0,
                             eval_every=50, eval_batches=10, save_every=100, log_every=10, sample_tokens=0)


def finetune(
    checkpoint: Path,
    *,
    data: list[Path],
    out: Path,
    task: Literal["sft", "classify"] = "sft",
    method: Literal["full", "lora", "adapter", "prefix"] = "full",
    resume: bool = False,
    train_on: Literal["completion", "prompt+completion", "last-turn"] = "completion",
    pack: bool = True,
    val_fraction: float = 0.05,
    on_bad_row: Literal["error", "skip"] = "error",
    merge: bool = True,
    trainable: Literal["head", "last-k-blocks", "all"] = "all",
    last_blocks: int = 2,
    qat: Literal["int8", "int4"] | None = None,
    qat_group_size: int = 32,
    qat_start_step: int = 0,
    qat_activations: Literal["none", "int8"] = "none",
    train: TrainConfig = FINETUNE_TRAIN,
    parallel: ParallelConfig = ParallelConfig(),
    lora: LoraConfig = LoraConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    prefix: PrefixConfig = PrefixConfig(),
) -> None:
    """Fine-tune a checkpoint (pretrained here, or converted from Hugging Face or GGUF) into a new
    checkpoint directory that every later command reads.

    Example:
        lmforge finetune runs/base --data alpaca_en_demo.json --out runs/sft --method lora --train.steps 300
        lmforge finetune runs/base --data chats.jsonl --data more.jsonl.gz --out runs/chat --train-on last-turn
        lmforge finetune runs/base --data reviews.jsonl --out runs/sentiment --task classify --trainable last-k-blocks
        lmforge finetune runs/gemma --data alpaca_zh_demo.json --out runs/g --method lora --lora.r 16 --lora.targets all-linear
        lmforge finetune runs/base --data alpaca_en_demo.json --out runs/sft --resume
        lmforge finetune runs/base --data alpaca_en_demo.json --out runs/sft-int4 --qat int4 --qat-start-step 100
        lmforge finetune runs/base --data alpaca_en_demo.json --out runs/sft-w8a8 --qat int8 --qat-activations int8
        torchrun --nproc-per-node 2 -m lmforge finetune runs/base --data a.json --out runs/ddp --parallel.dp_replicate 2

    Args:
        checkpoint: The starting checkpoint directory (config.json, model.safetensors, tokenizer.json).
        data: Example files, JSON or JSONL, optionally .gz. sft: Alpaca rows {instruction, input, output},
            chat rows {"messages": [{role, content}]}, ShareGPT rows {"conversations": [{from, value}]}, or
            {prompt, completion}; classify: {text, label}.
        out: The new checkpoint directory (also holds metrics.jsonl and train/ while training).
        task: sft (next-token loss on the supervised tokens) or classify (a head on the last token).
        method: full (every parameter), lora, adapter (bottleneck adapters) or prefix (prefix tuning).
        resume: Continue the run in --out from its newest intact checkpoint.
        train_on: Which tokens are trained: every assistant turn (completion), only the last one
            (last-turn), or all tokens (prompt+completion).
        pack: Pack several examples into one window, each attending only to itself (else pad each batch).
        val_fraction: Share of the examples held out for validation, chosen by a hash of each example.
        on_bad_row: error (stop at the first bad row, naming file and line) or skip (count and report).
        merge: With lora, fold the trained low-rank update into model.safetensors at the end
            (adapter.safetensors is written either way).
        trainable: classify only: the head alone, the head and the last --last-blocks blocks, or all.
        last_blocks: Blocks trained with --trainable last-k-blocks.
        qat: Quantization-aware training (with --method full): the linear layers compute with their
            weights as int8 / int4 will hold them (straight-through gradients), and the final
            checkpoint is that quantized model (as `lmforge quantize` writes it).
        qat_group_size: int4 QAT: inputs sharing a scale.
        qat_start_step: Steps trained in full precision before fake quantization starts.
        qat_activations: int8 (with --qat int8): also round each layer's input as the w8a8 kernel
            does (`lmforge quantize --activations int8`), and write a w8a8 checkpoint.
        train: Optimisation, precision, schedule, evaluation and checkpoint settings.
        parallel: Data parallelism (dp_replicate: DDP, dp_shard: FSDP2); fine-tuning does not cut the
            model by tensor or pipeline parallelism.
        lora: LoRA's rank, alpha, dropout, target modules and rsLoRA scaling (with --method lora).
        adapter: The bottleneck adapters' size, activation and dropout (with --method adapter).
        prefix: The prefix length and its reparameterisation (with --method prefix).
    """
    import sys

    from lmforge.train.finetuning import FinetuneOptions, launch_finetuning

    peft_config = {"lora": lora, "adapter": adapter, "prefix": prefix}.get(method)
    options = FinetuneOptions(method=method, peft_config=peft_config, train_on=train_on, pack=pack,
                              val_fraction=val_fraction, on_bad_row=on_bad_row, merge=merge,
                              trainable=trainable, last_blocks=last_blocks, qat=qat, qat_group_size=qat_group_size,
                              qat_start_step=qat_start_step, qat_activations=qat_activations)
    result = launch_finetuning(checkpoint, data, out, task, train, parallel, options, resume)
    if result is not None:
        val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"fine-tuned to step {result.step}{val}; checkpoint in {result.out}", file=sys.stderr)
