"""`lmforge model info`: options out of range are one-line errors, not numbers computed from them."""

from __future__ import annotations

import pytest

from lmforge.cli import run


@pytest.mark.parametrize("length", ["-5", "0"])
def test_context_length_must_be_positive(capsys, length):
    assert run(["model", "info", "--preset", "gpt2", "--context-length", length]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"lmforge: error: --context-length must be ≥ 1, got {length}\n"


def test_context_length_sets_the_attention_flops(capsys):
    assert run(["model", "info", "--preset", "gpt2", "--context-length", "64"]) == 0
    assert "attention at context 64" in capsys.readouterr().out
