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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32",
    compile: bool = False,
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
        precision: Weights' dtype for inference; auto: bf16 where the hardware computes it natively, else fp32.
        compile: Run each decode step as one compiled graph (torch.compile): the first steps
            compile (about a minute on a CPU, less when its cache is warm), every later step is
            faster; worth it for long outputs and sessions.
    """
    from lmforge.bounds import at_least, between, check_value
    from lmforge.infer.engine import Sampling
    from lmforge.infer.loaded import load_for_inference

    check_value("--max-new-tokens", max_new_tokens, at_least(0))
    check_value("--temperature", temperature, at_least(0))
    check_value("--top-k", top_k, at_least(0))
    check_value("--top-p", top_p, between(0, 1, low_open=True))
    loaded = load_for_inference(checkpoint, device, precision)
    prompt_ids = loaded.encode(prompt)
    if not prompt_ids:
        raise LmforgeError("--prompt is empty")
    if len(prompt_ids) >= loaded.context_length:
        raise LmforgeError(f"the prompt is {len(prompt_ids)} tokens; the model's context holds {loaded.context_length}")
    sys.stdout.write(prompt)
    if max_new_tokens:
        engine = loaded.engine(max_batch=1, compile=compile)
        sampling = Sampling(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p, seed=seed)
        engine.run([engine.submit(prompt_ids, sampling, on_event=lambda event: _write(event.text))])
    sys.stdout.write("\n")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
