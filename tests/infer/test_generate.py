"""Generation: seeds repeat, stop tokens stop, streaming text is whole UTF-8, and the CLI works end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.cli import main, run
from lmforge.infer.generate import TextStream, generate_tokens
from lmforge.model.checkpoint_directory import save_checkpoint
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


TOKENIZER_VOCAB = 96  # the printable ASCII characters and <|endoftext|>


def _character_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {chr(c): i for i, c in enumerate(range(32, 127))}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(path))
    assert tokenizer.get_vocab_size() == TOKENIZER_VOCAB
    return path


def _checkpoint(tmp_path, model):
    save_checkpoint(model, tmp_path / "run", tokenizer=_character_tokenizer(tmp_path / "tokenizer.json"),
                    generation={"stop_token_ids": []})
    return tmp_path / "run"


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    return _checkpoint(tmp_path, Transformer(dataclasses.replace(preset_config("tiny-llama"), vocab_size=TOKENIZER_VOCAB)))


def _padded_model(padding: int = 32) -> Transformer:
    """A model with `padding` embedding rows past the tokenizer's vocabulary, rigged so that one
    of those rows has by far the largest logit at every step (as a padded vocabulary's untrained
    rows can)."""
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(preset_config("tiny-llama"), vocab_size=TOKENIZER_VOCAB + padding)).eval()
    with torch.no_grad():
        model.norm.weight.zero_()
        model.norm.weight[0] = 1.0  # the head sees only the first coordinate, of either sign
        model.lm_head.weight[TOKENIZER_VOCAB:, 0] = torch.tensor([1000.0, -1000.0]).repeat(padding // 2)
    return model


def test_padding_rows_are_never_chosen():
    model = _padded_model()
    assert all(token >= TOKENIZER_VOCAB for token in generate_tokens(model, [1, 2, 3], 10, temperature=0.0))
    for options in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 1.5, "top_k": 0, "top_p": 1.0},
                    {"temperature": 1.0, "top_k": 5}, {"temperature": 1.0, "top_p": 0.9}):
        tokens = list(generate_tokens(model, [1, 2, 3], 40, seed=0, tokenizer_vocab_size=TOKENIZER_VOCAB, **options))
        assert len(tokens) == 40 and max(tokens) < TOKENIZER_VOCAB, options


@pytest.mark.parametrize("temperature", ["0", "1"])
def test_cli_generate_with_a_padded_vocabulary(tmp_path, capsys, temperature):
    checkpoint = _checkpoint(tmp_path, _padded_model())
    assert run(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens", "20", "--temperature", temperature,
                "--seed", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("Hello") and len(captured.out) > len("Hello\n")


def test_cli_generate_refuses_a_tokenizer_larger_than_the_model(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = _checkpoint(tmp_path, Transformer(dataclasses.replace(preset_config("tiny-llama"), vocab_size=64)))
    assert run(["generate", str(checkpoint), "--prompt", "Hi", "--max-new-tokens", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("lmforge: error: ") and "has 96 token ids but the model has 64" in captured.err


def test_cli_generate_greedy_streams_continuation(checkpoint, capsys):
    main(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"])
    out = capsys.readouterr().out
    assert out.startswith("Hello") and len(out.rstrip("\n")) > len("Hello")
    main(["generate", str(checkpoint), "--prompt", "Hello", "--max-new-tokens", "12", "--temperature", "0"])
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("argv,message", [
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be ≥ 0"),
    (["--temperature", "-1"], "--temperature must be ≥ 0"),
    (["--top-k", "-1"], "--top-k must be ≥ 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
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
