"""Sliding-window perplexity equals an explicit token-by-token computation with the same contexts."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.eval.perplexity import PerplexityResult, count_text_bytes, evaluate_perplexity, window_starts
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

CONTEXT = 8
DOCUMENTS = [
    "Perplexity measures how surprised a language model is by held-out text.",
    "Bits per byte divide by the text's bytes, so tokenizers can be compared: naïve café, 東京, ☃.",
    "A sliding window gives every prediction as much left context as the stride allows.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCUMENTS * 5, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=CONTEXT)
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def documents(tokenizer) -> np.ndarray:
    """Every document followed by EOS, as in the shards."""
    ids = []
    for document in DOCUMENTS:
        ids += [*tokenizer.encode(document), tokenizer.eos_id]
    return np.asarray(ids, dtype=np.int64)


@pytest.fixture(scope="module")
def stream(documents) -> np.ndarray:
    return documents[: 4 * CONTEXT + 3]  # four full windows and a short one


def explicit_nats(model: Transformer, ids: np.ndarray, context: int, stride: int) -> float:
    """Position p > 0 is predicted from tokens[start:p], where start begins the window that first
    reaches p: window 0 covers targets 1..context, window k ≥ 1 adds targets up to context + k·stride."""
    total = 0.0
    with torch.no_grad():
        for position in range(1, len(ids)):
            window = 0 if position <= context else math.ceil((position - context) / stride)
            start = window * stride
            assert position - start <= context
            logits = model(torch.tensor(ids[start:position][None]))[0, -1]
            total -= torch.log_softmax(logits.double(), dim=-1)[ids[position]].item()
    return total


@pytest.mark.parametrize("stride", [CONTEXT, 5, 1])
def test_matches_explicit_per_token_loss(model, stream, stride):
    result = evaluate_perplexity(model, stream, CONTEXT, stride, batch_size=3)
    expected = explicit_nats(model, stream, CONTEXT, stride)
    assert result.tokens == len(stream) - 1
    assert result.loss == pytest.approx(expected / (len(stream) - 1), rel=1e-5, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_batch_size_dtype_and_container_do_not_change_the_result(model, stream):
    reference = evaluate_perplexity(model, stream, CONTEXT, 7, batch_size=1)
    for tokens, batch_size in [(stream.astype(np.uint16), 4), (torch.from_numpy(stream), 64)]:
        result = evaluate_perplexity(model, tokens, CONTEXT, 7, batch_size=batch_size)
        assert result.tokens == reference.tokens
        assert result.nats == pytest.approx(reference.nats, rel=1e-6)


def test_stream_shorter_than_one_window(model, stream):
    short = stream[:CONTEXT - 2]
    result = evaluate_perplexity(model, short, CONTEXT)
    assert result.tokens == CONTEXT - 3
    assert result.nats == pytest.approx(explicit_nats(model, short, CONTEXT, CONTEXT), rel=1e-5)


def test_every_target_is_scored_exactly_once():
    for scored in (1, CONTEXT - 1, CONTEXT, CONTEXT + 1, 100):
        for stride in (1, 3, CONTEXT):
            starts = window_starts(scored, CONTEXT, stride)
            covered = [starts[0] + offset for offset in range(min(CONTEXT, scored))]
            for start in starts[1:]:
                covered += range(start + CONTEXT - stride, min(start + CONTEXT, scored))
            assert covered == list(range(scored)), (scored, stride)


def test_restores_training_mode(model, stream):
    model.train()
    try:
        evaluate_perplexity(model, stream, CONTEXT)
        assert model.training
    finally:
        model.eval()


def test_bf16_autocast_is_close(model, stream):
    exact = evaluate_perplexity(model, stream, CONTEXT)
    approximate = evaluate_perplexity(model, stream, CONTEXT, autocast_dtype=torch.bfloat16)
    assert approximate.loss == pytest.approx(exact.loss, rel=2e-2)


@pytest.mark.parametrize("stride,message", [(0, "stride 0"), (CONTEXT + 1, "stride 9")])
def test_bad_stride(model, stream, stride, message):
    with pytest.raises(LmforgeError, match=message):
        evaluate_perplexity(model, stream, CONTEXT, stride)


def test_too_few_tokens(model):
    with pytest.raises(LmforgeError, match="too few"):
        evaluate_perplexity(model, np.asarray([3]), CONTEXT)


def test_text_bytes_skip_special_tokens_and_keep_multibyte_characters(tokenizer, documents):
    assert count_text_bytes(tokenizer, documents) == sum(len(document.encode("utf-8")) for document in DOCUMENTS)


def test_bits_per_byte_formula():
    result = PerplexityResult(nats=100.0, tokens=40, bytes=160)
    assert result.bits_per_byte == pytest.approx(100.0 / (math.log(2) * 160))
    assert PerplexityResult(nats=1.0, tokens=1).bits_per_byte is None
    assert set(result.to_dict()) >= {"loss", "perplexity", "bits_per_byte", "tokens", "bytes"}
