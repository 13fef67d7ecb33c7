"""`lmforge align`: preference training on the one loop — a reward model (`reward`) and its
scores (`reward-score`), DPO (`dpo`), and PPO against a reward model (`ppo`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from lmforge.peft import AdapterConfig, LoraConfig, PrefixConfig
from lmforge.train.config import ParallelConfig, TrainConfig

ALIGN_TRAIN = TrainConfig(steps=100, micro_batch_size=4, lr=5e-6, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0,
                          eval_every=25, eval_batches=10, save_every=50, log_every=5, sample_tokens=0)
REWARD_TRAIN = TrainConfig(steps=100, micro_batch_size=4, lr=1e-5, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.0,
                           eval_every=25, eval_batches=10, save_every=50, log_every=5, sample_tokens=0)


def _options(method: str, lora: LoraConfig, adapter: AdapterConfig, prefix: PrefixConfig, **settings):
    from lmforge.train.alignment import AlignOptions

    peft_config = {"lora": lora, "adapter": adapter, "prefix": prefix}.get(method)
    return AlignOptions(method=method, peft_config=peft_config, **settings)


def _report(result, what: str) -> None:
    if result is not None:
        val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"{what} trained to step {result.step}{val}; checkpoint in {result.out}", file=sys.stderr)


def dpo(
    checkpoint: Path,
    *,
    data: list[Path],
    out: Path,
    beta: float = 0.1,
    loss: Literal["sigmoid", "ipo"] = "sigmoid",
    logps: Literal["sum", "mean"] | None = None,
    max_prompt_tokens: int | None = None,
    method: Literal["full", "lora", "adapter", "prefix"] = "full",
    resume: bool = False,
    val_fraction: float = 0.05,
    on_bad_row: Literal["error", "skip"] = "error",
    merge: bool = True,
    train: TrainConfig = ALIGN_TRAIN,
    parallel: ParallelConfig = ParallelConfig(),
    lora: LoraConfig = LoraConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    prefix: PrefixConfig = PrefixConfig(),
) -> None:
    """Train a policy on preference pairs with DPO (Rafailov et al. 2023): the policy starts from
    CHECKPOINT, the reference is the same weights, frozen. The reference's log-probabilities of every
    pair are computed once before training, so one model is in memory. A response's log-probability
    is the SUM of its tokens' (`--logps mean` averages them; IPO's default). Metrics: loss,
    rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (and val_ ones).

    Example:
        lmforge align dpo runs/sft --data dpo_en_demo.json --out runs/dpo --beta 0.1 --train.steps 200
        lmforge align dpo runs/sft --data pairs.jsonl --out runs/dpo-lora --method lora --train.lr 5e-5
        lmforge align dpo runs/sft --data pairs.jsonl --out runs/ipo --loss ipo --beta 0.5

    Args:
        checkpoint: The starting checkpoint directory (an SFT model, typically).
        data: Preference files, JSON or JSONL (optionally .gz): {prompt, chosen, rejected} rows (strings, or
            chat messages as the prompt) or llamafactory's {conversations, chosen, rejected}.
        out: The new checkpoint directory (metrics.jsonl and train/ too).
        beta: DPO's β: how far the policy may move from the reference (the implicit reward's scale).
        loss: sigmoid (DPO's −log σ(β·margin)) or ipo ((margin − 1/(2β))²).
        logps: sum (default for sigmoid) or mean (default for ipo) of the response tokens' log-probabilities.
        max_prompt_tokens: Prompts longer than this keep their last tokens (default: half the context).
        method: full, lora, adapter or prefix: what trains.
        resume: Continue the run in --out from its newest intact checkpoint.
        val_fraction: Share of the pairs held out for validation, chosen by a hash of each pair.
        on_bad_row: error (stop at the first bad row) or skip (count and report).
        merge: With lora, fold the update into model.safetensors at the end.
        train: Optimisation, precision, schedule, evaluation and checkpoint settings.
        parallel: Data parallelism (dp_replicate: DDP, dp_shard: FSDP2).
        lora: LoRA settings (with --method lora).
        adapter: Bottleneck adapter settings (with --method adapter).
        prefix: Prefix tuning settings (with --method prefix).
    """
    from lmforge.train.alignment import launch_alignment

    options = _options(method, lora, adapter, prefix, beta=beta, loss=loss, logps=logps,
                       max_prompt_tokens=max_prompt_tokens, val_fraction=val_fraction, on_bad_row=on_bad_row, merge=merge)
    _report(launch_alignment("dpo", checkpoint, data, out, train, parallel, options, resume), "DPO policy")


def reward(
    checkpoint: Path,
    *,
    data: list[Path],
    out: Path,
    method: Literal["full", "lora", "adapter", "prefix"] = "full",
    trainable: Literal["head", "last-k-blocks", "all"] = "all",
    last_blocks: int = 2,
    max_prompt_tokens: int | None = None,
    resume: bool = False,
    val_fraction: float = 0.05,
    on_bad_row: Literal["error", "skip"] = "error",
    merge: bool = True,
    train: TrainConfig = REWARD_TRAIN,
    parallel: ParallelConfig = ParallelConfig(),
    lora: LoraConfig = LoraConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    prefix: PrefixConfig = PrefixConfig(),
) -> None:
    """Train a reward model on preference pairs (InstructGPT's second stage): a scalar head on the
    last token of prompt + response, Bradley–Terry loss −log σ(r_chosen − r_rejected). Logs the
    validation accuracy (chosen scored higher) and mean margin (val_accuracy, val_margin).

    Example:
        lmforge align reward runs/sft --data dpo_en_demo.json --out runs/rm --train.steps 200
        lmforge align reward runs/sft --data pairs.jsonl --out runs/rm-lora --method lora --train.lr 1e-4
        lmforge align reward-score runs/rm --data responses.jsonl

    Args:
        checkpoint: The starting checkpoint directory.
        data: Preference files, as for `align dpo`.
        out: The reward model's directory (a checkpoint plus reward_head.safetensors and reward.json).
        method: full, lora, adapter or prefix (the head always trains).
        trainable: With --method full: the head alone, the head and the last --last-blocks blocks, or all.
        last_blocks: Blocks trained with --trainable last-k-blocks.
        max_prompt_tokens: Prompts longer than this keep their last tokens (default: half the context).
        resume: Continue the run in --out from its newest intact checkpoint.
        val_fraction: Share of the pairs held out for validation, chosen by a hash of each pair.
        on_bad_row: error (stop at the first bad row) or skip (count and report).
        merge: With lora, fold the update into model.safetensors at the end.
        train: Optimisation, precision, schedule, evaluation and checkpoint settings.
        parallel: Data parallelism (dp_replicate: DDP, dp_shard: FSDP2).
        lora: LoRA settings (with --method lora).
        adapter: Bottleneck adapter settings (with --method adapter).
        prefix: Prefix tuning settings (with --method prefix).
    """
    from lmforge.train.alignment import launch_alignment

    options = _options(method, lora, adapter, prefix, trainable=trainable, last_blocks=last_blocks,
                       max_prompt_tokens=max_prompt_tokens, val_fraction=val_fraction, on_bad_row=on_bad_row, merge=merge)
    _report(launch_alignment("reward", checkpoint, data, out, train, parallel, options, resume), "reward model")


def reward_score(model: Path, *, data: list[Path], batch_size: int = 8, on_bad_row: Literal["error", "skip"] = "error",
                 device: str = "auto") -> None:
    """Score responses with a reward model: one {"score": …} JSON line a row, in input order.

    Example:
        lmforge align reward-score runs/rm --data responses.jsonl
        lmforge align reward-score runs/rm --data chats.jsonl > scores.jsonl

    Args:
        model: A reward model directory (`lmforge align reward`).
        data: JSON or JSONL files of {prompt, response} rows (prompt as text or chat messages) or {messages}
            rows ending with the assistant's reply.
        batch_size: Sequences scored at once.
        on_bad_row: error (stop at the first bad row, naming file and line) or skip (its line is {"score": null},
            so lines still match rows; the count goes to stderr).
        device: cpu, cuda, or auto.
    """
    import json

    from lmforge.data.examples import chat_template_of
    from lmforge.data.examples.preferences import read_responses, tokenize_response
    from lmforge.errors import LmforgeError
    from lmforge.runtime import resolve_device
    from lmforge.train.alignment import load_reward_model, score_sequences
    from lmforge.train.chat_format import template_tokens

    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, got {batch_size}")
    network, head, tokenizer, generation = load_reward_model(model, resolve_device(device))
    rows, report = read_responses(data, on_bad_row=on_bad_row, keep_bad=True)
    if report.skipped:
        print(f"skipped {report.skipped} bad row(s) (first: {report.first_errors[0]}); their lines are null", file=sys.stderr)
    template, special = chat_template_of(generation), template_tokens(tokenizer, generation)
    limit = network.config.context_length
    sequences = []
    for row in rows:
        if row is None:
            continue
        prompt, response = tokenize_response(row.prompt, row.response, tokenizer, template, source=row.source, **special)
        ids = (prompt + response)[-limit:]
        if not ids:
            raise LmforgeError(f"{row.source}: nothing to score (empty prompt and response)")
        sequences.append(ids)
    scores = iter(score_sequences(network, head, sequences, batch_size))
    for row in rows:
        print(json.dumps({"score": None if row is None else next(scores)}))


def ppo(
    checkpoint: Path,
    *,
    reward_model: Path,
    prompts: list[Path],
    out: Path,
    kl_coef: float = 0.05,
    clip: float = 0.2,
    value_clip: float = 0.2,
    value_coef: float = 0.1,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
    ppo_epochs: int = 4,
    rollout_batch: int = 16,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float | None = None,
    method: Literal["full", "lora", "adapter", "prefix"] = "full",
    resume: bool = False,
    on_bad_row: Literal["error", "skip"] = "error",
    merge: bool = True,
    train: TrainConfig = TrainConfig(steps=100, micro_batch_size=4, lr=1e-5, warmup_steps=0, min_lr_ratio=1.0,
                                     weight_decay=0.0, eval_every=0, save_every=20, log_every=4, sample_tokens=0),
    lora: LoraConfig = LoraConfig(),
    adapter: AdapterConfig = AdapterConfig(),
    prefix: PrefixConfig = PrefixConfig(),
) -> None:
    """Train a policy against a reward model with PPO (InstructGPT's third stage): sample responses
    to --prompts with the policy, score them with --reward-model, penalise each token by
    kl_coef·(log π − log π_ref) against the frozen starting model, estimate advantages with a value
    head and GAE, and take --ppo-epochs passes of the clipped PPO objective over each rollout batch.
    Logs reward (mean over the rollout), kl (per response), clip_fraction, entropy, value_loss,
    policy_loss and approx_kl in metrics.jsonl. One process; with --method lora the reference is
    the policy with its adapter off, so one model is in memory (besides the reward model).

    Example:
        lmforge align ppo runs/sft --reward-model runs/rm --prompts prompts.jsonl --out runs/ppo --train.steps 40
        lmforge align ppo runs/sft --reward-model runs/rm --prompts prompts.jsonl --out runs/ppo-lora --method lora \\
            --train.lr 1e-4 --kl-coef 0.1 --rollout-batch 32 --max-new-tokens 48

    Args:
        checkpoint: The starting policy (an SFT model, typically); also the frozen reference.
        reward_model: A reward model directory (`lmforge align reward`) with the same tokenizer.
        prompts: JSON or JSONL files of {prompt} rows (text or chat messages) or {messages} ending with a user turn.
        out: The new checkpoint directory (metrics.jsonl and train/ too).
        kl_coef: β of the per-token KL penalty against the reference.
        clip: ε of the clipped probability ratio.
        value_clip: How far a value estimate may move from its rollout value before its loss is clipped.
        value_coef: Weight of the value loss beside the policy loss.
        gamma: Discount over a response's tokens.
        gae_lambda: λ of generalised advantage estimation.
        ppo_epochs: Passes over each rollout batch.
        rollout_batch: Responses sampled per rollout (a multiple of micro_batch_size × grad_accum).
        max_new_tokens: Longest response sampled.
        temperature: Sampling temperature of the rollouts.
        top_p: Nucleus sampling of the rollouts (default: off).
        method: full, lora, adapter or prefix: what trains (the value head always does).
        resume: Continue the run in --out from its newest intact checkpoint (the rollout buffer included).
        on_bad_row: error (stop at the first bad prompt row) or skip (count and report).
        merge: With lora, fold the update into model.safetensors at the end.
        train: Optimisation, precision and checkpoint settings; a step is one optimisation batch.
        lora: LoRA settings (with --method lora).
        adapter: Bottleneck adapter settings (with --method adapter).
        prefix: Prefix tuning settings (with --method prefix).
    """
    import functools

    from lmforge.errors import LmforgeError
    from lmforge.train.finetuning import launch_finetuning
    from lmforge.train.ppo import PpoOptions, ppo_job

    for name, value, low in (("kl-coef", kl_coef, 0), ("clip", clip, 1e-9), ("value-clip", value_clip, 1e-9),
                             ("value-coef", value_coef, 0), ("ppo-epochs", ppo_epochs, 1), ("rollout-batch", rollout_batch, 1),
                             ("max-new-tokens", max_new_tokens, 1), ("temperature", temperature, 1e-9)):
        if not value >= low:
            raise LmforgeError(f"--{name} must be {'positive' if low else 'at least 0'}, got {value}")
    if not (0 <= gamma <= 1 and 0 <= gae_lambda <= 1):
        raise LmforgeError(f"--gamma and --gae-lambda must be in [0, 1], got {gamma} and {gae_lambda}")
    if not reward_model.is_dir():
        raise LmforgeError(f"{reward_model}: no such reward model directory")
    peft_config = {"lora": lora, "adapter": adapter, "prefix": prefix}.get(method)
    options = PpoOptions(method=method, peft_config=peft_config, on_bad_row=on_bad_row, merge=merge, kl_coef=kl_coef,
                         clip=clip, value_clip=value_clip, value_coef=value_coef, gamma=gamma, gae_lambda=gae_lambda,
                         ppo_epochs=ppo_epochs, rollout_batch=rollout_batch, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p)
    build = functools.partial(ppo_job, reward_model=reward_model)
    result = launch_finetuning(checkpoint, prompts, out, "ppo", train, ParallelConfig(), options, resume, build=build)
    _report(result, "PPO policy")
