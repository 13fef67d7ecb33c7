"""`lmforge generate`: continue a prompt with a checkpoint, streaming the text as it is made."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError


def generate(
    checkpoint: Path,
    *,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
) -> None:
    """Generate text from a prompt with the KV cache; greedy at --temperature 0; stops at the
    checkpoint's stop tokens (EOS).

    Example:
        lmforge generate runs/quickstart --prompt "The history of" --max-new-tokens 50
        lmforge generate runs/quickstart --prompt "人民" --temperature 0
        lmforge generate runs/quickstart --prompt "Once" --temperature 0.7 --top-p 0.9 --seed 1

    Args:
        checkpoint: An lmforge checkpoint directory (config.json, model.safetensors, tokenizer.json).
        prompt: The text to continue.
        max_new_tokens: The most tokens to generate (also bounded by the model's context).
        temperature: Sampling temperature; 0 picks the most likely token every step.
        top_k: Sample only among the k most likely tokens (0 or none: all).
        top_p: Sample only among the most likely tokens whose probabilities sum to p (nucleus).
        seed: Random seed, for repeatable samples.
        device: auto, cpu, cuda, cuda:N.
        precision: Weights' dtype for inference.
    """
    from lmforge.bounds import at_least, between, check_value
    from lmforge.infer.generate import TextStream, generate_tokens
    from lmforge.model.checkpoint import TOKENIZER_FILE, read_config, read_generation
    from lmforge.peft import load_finetuned
    from lmforge.runtime import DTYPES, resolve_device
    from lmforge.tokenizer import load_tokenizer

    check_value("--max-new-tokens", max_new_tokens, at_least(0))
    check_value("--temperature", temperature, at_least(0))
    check_value("--top-k", top_k, at_least(0))
    check_value("--top-p", top_p, between(0, 1, low_open=True))
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; a checkpoint needs its tokenizer to read prompts")
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    model_vocab_size = read_config(checkpoint).vocab_size
    if tokenizer.vocab_size > model_vocab_size:
        raise LmforgeError(
            f"{checkpoint / TOKENIZER_FILE} has {tokenizer.vocab_size:,} token ids but the model has {model_vocab_size:,}; "
            "this tokenizer belongs to another model: put the model's own tokenizer.json in the checkpoint"
        )
    model = load_finetuned(checkpoint, resolve_device(device), DTYPES[precision]).eval()
    settings = read_generation(checkpoint)
    stop_ids = set(settings.get("stop_token_ids", []))
    if tokenizer.eos_id is not None:
        stop_ids.add(tokenizer.eos_id)
    prompt_ids = tokenizer.encode(prompt)
    if "bos_token_id" in settings and prompt_ids[:1] != [settings["bos_token_id"]]:
        prompt_ids = [settings["bos_token_id"], *prompt_ids]
    if not prompt_ids:
        raise LmforgeError("--prompt is empty")
    if len(prompt_ids) >= model.config.context_length:
        raise LmforgeError(f"the prompt is {len(prompt_ids)} tokens; the model's context holds {model.config.context_length}")

    stream = TextStream(tokenizer.decode)
    sys.stdout.write(prompt)
    tokens = generate_tokens(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, sorted(stop_ids), seed,
                             tokenizer_vocab_size=tokenizer.vocab_size)
    for token_id in tokens:
        sys.stdout.write(stream.push(token_id))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
