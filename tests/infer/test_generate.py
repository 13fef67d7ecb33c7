"""Generation: seeds repeat, stop tokens stop, streaming text is whole UTF-8, and the CLI works end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.cli import main
from lmforge.infer.generate import TextStream, generate_tokens
from lmforge.model.checkpoint import save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(preset_config("tiny-llama")).eval()


def test_same_seed_same_tokens(model):
    first = list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=7))
    assert first == list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=7))
    assert first != list(generate_tokens(model, [1, 2, 3], 30, temperature=1.0, seed=8))


def test_greedy_equals_argmax_of_full_forward(model):
    tokens = [5, 6, 7]
    generated = list(generate_tokens(model, tokens, 10, temperature=0.0))
    for token in generated:
        with torch.no_grad():
            assert int(model(torch.tensor([tokens]))[0, -1].argmax()) == token
        tokens.append(token)


def test_stops_at_stop_token_and_context(model):
    greedy = list(generate_tokens(model, [1, 2, 3], 10, temperature=0.0))
    stopped = list(generate_tokens(model, [1, 2, 3], 10, temperature=0.0, stop_ids=[greedy[4]]))
    assert stopped == greedy[: greedy.index(greedy[4])]
    near_end = list(range(1, 126))  # context is 128
    assert len(list(generate_tokens(model, near_end, 50, temperature=0.0))) == 3


def test_text_stream_holds_back_partial_characters():
    pieces = {1: b"\xe4", 2: b"\xbd", 3: b"\xa0", 4: b"!"}  # 你 split over three tokens
    stream = TextStream(lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace"))
    assert [stream.push(i) for i in (1, 2, 3, 4)] == ["", "", "你", "!"]


@pytest.fixture
def checkpoint(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.get_vocab_size()))
    save_checkpoint(model, tmp_path / "run", tokenizer=tmp_path / "tokenizer.json", generation={"stop_token_ids": []})
    return tmp_path / "run"


def test_cli_generate_greedy_streams_continuation(checkpoint, capsys):
    main(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"])
    out = capsys.readouterr().out
    assert out.startswith("Hello") and len(out.rstrip("\n")) > len("Hello")
    main(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"])
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("argv,message", [
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be ≥ 0"),
])
def test_cli_generate_bad_options(checkpoint, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(checkpoint), "--prompt", "Hi", *argv])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def test_cli_generate_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(tmp_path / "nothing"), "--prompt", "Hi"])
    assert exit_info.value.code == 1
    assert "nothing" in capsys.readouterr().err
