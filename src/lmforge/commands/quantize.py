"""`lmforge quantize`: a checkpoint with int8 or int4 weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal


def quantize(
    checkpoint: Path,
    dst: Path,
    *,
    scheme: Literal["int8", "int4"] = "int8",
    group_size: int = 32,
    symmetric: bool = False,
    activations: Literal["none", "int8"] = "none",
    output_layer: bool = False,
    overwrite: bool = False,
) -> None:
    """Weight-only post-training quantization of every linear layer of the blocks (and, with
    --output-layer, of the output layer): int8 with one scale per output channel, or int4 with
    one scale (and zero) per --group-size inputs. The result is a checkpoint directory every command
    reads (generate, chat, serve, eval); its config.json records the scheme.

    Example:
        lmforge quantize runs/gemma runs/gemma-int8
        lmforge quantize runs/gemma runs/gemma-int4 --scheme int4 --group-size 64
        lmforge quantize runs/chat runs/chat-int4 --scheme int4 --symmetric --output-layer
        lmforge quantize runs/gemma runs/gemma-w8a8 --activations int8 --output-layer   # fastest on a CPU

    Args:
        checkpoint: The checkpoint to quantize (a fine-tune's adapter is merged first).
        dst: The quantized checkpoint directory to write.
        scheme: int8 (per output channel) or int4 (group-wise).
        group_size: int4: inputs sharing a scale (a power of two; layers it does not tile stay in full precision).
        symmetric: int4: scales only, no zero point.
        activations: int8 also quantizes each layer's input on the fly (w8a8): on a CPU, integer
            matmuls several times faster than fp32, for about 2 % relative error a layer.
        output_layer: Quantize the output layer too (a tied one gets codes of its own; the embedding
            lookup keeps full precision). On a large vocabulary it is most of what decoding reads.
        overwrite: Replace an existing checkpoint at DST.
    """
    from lmforge.errors import LmforgeError
    from lmforge.model.checkpoint_directory import CHECKPOINT, GENERATION_FILE, TOKENIZER_FILE, read_generation
    from lmforge.output_directory import check_output_directory
    from lmforge.peft import load_finetuned
    from lmforge.quant.apply import quantize_model, read_quantization, save_quantized
    from lmforge.quant.schemes import QuantScheme

    chosen = QuantScheme(scheme, group_size, symmetric, activations)
    if read_quantization(checkpoint) is not None:
        raise LmforgeError(f"{checkpoint} is quantized already; quantize the full-precision checkpoint")
    check_output_directory(dst, CHECKPOINT, overwrite=overwrite, option="DST")
    model = load_finetuned(checkpoint)
    before = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    count = quantize_model(model, chosen, output=output_layer)
    if count == 0:
        raise LmforgeError(f"{checkpoint}: no linear layer takes {scheme} groups of {group_size}; choose a smaller --group-size")
    tokenizer = checkpoint / TOKENIZER_FILE
    after = save_quantized(model, dst, tokenizer if tokenizer.is_file() else None,
                           read_generation(checkpoint) if (checkpoint / GENERATION_FILE).is_file() else None)
    print(f"quantized {count} linear layers to {scheme}" + (f" (groups of {group_size})" if scheme == "int4" else "")
          + (" with int8 inputs (w8a8)" if activations == "int8" else "")
          + f": {before / 2**20:,.1f} MiB → {after / 2**20:,.1f} MiB of weights; checkpoint in {dst}", file=sys.stderr)
