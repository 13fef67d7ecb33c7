"""`lmforge convert from-hf` / `to-hf`: Hugging Face model directories ⇄ lmforge checkpoints."""

from __future__ import annotations

from pathlib import Path


def from_hf(src: Path, dst: Path, *, overwrite: bool = False) -> None:
    """Convert a Hugging Face gpt2 / llama / qwen2 directory (config.json + safetensors, sharded or
    not, tokenizer files) into an lmforge checkpoint directory.

    Example:
        lmforge convert from-hf ./hf-gpt2 ./runs/gpt2
        lmforge convert from-hf ./Llama-3.2-1B ./runs/llama --overwrite

    Args:
        src: The Hugging Face model directory.
        dst: The lmforge checkpoint directory to create (outside src).
        overwrite: Replace dst if it holds an earlier lmforge checkpoint (nothing else: no run with its train/ state).
    """
    from lmforge.interop.hf import from_hf as convert

    convert(src, dst, overwrite)
    print(f"wrote {dst}")


def to_hf(src: Path, dst: Path, *, overwrite: bool = False) -> None:
    """Export an lmforge checkpoint directory as a Hugging Face directory that
    `transformers.AutoModelForCausalLM.from_pretrained` loads (gpt2, llama or qwen2, chosen from the config).

    Example:
        lmforge convert to-hf ./runs/my-model ./my-model-hf

    Args:
        src: The lmforge checkpoint directory.
        dst: The Hugging Face directory to create (outside src).
        overwrite: Replace dst if it holds an earlier output of `convert to-hf` and nothing else.
    """
    from lmforge.interop.hf import to_hf as convert

    convert(src, dst, overwrite)
    print(f"wrote {dst}")
