"""Format detection and the errors a person sees for a wrong tokenizer path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.tokenizer import load_tokenizer


def export_vocab_and_merges(tokenizer, directory: Path, prefix: str = "") -> Path:
    """GPT-2 style files from a trained tokenizer (special tokens stay in the vocab, as GPT-2's do)."""
    model = json.loads(tokenizer.backend.to_str())["model"]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{prefix}vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    (directory / f"{prefix}merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory / f"{prefix}vocab.json"


def test_every_form_of_path_loads_the_same_tokenizer(trained, samples, tmp_path):
    trained.save(tmp_path / "hf")
    export_vocab_and_merges(trained, tmp_path / "gpt2style")
    vocab_file = export_vocab_and_merges(trained, tmp_path / "prefixed", prefix="small_")
    expected = trained.encode_batch(samples)
    for path in (tmp_path / "hf", tmp_path / "hf" / "tokenizer.json", tmp_path / "gpt2style", vocab_file, str(vocab_file)):
        tokenizer = load_tokenizer(path)
        assert tokenizer.encode_batch(samples) == expected, path
        assert tokenizer.eos_id == trained.eos_id, path


def test_vocab_and_merges_mark_endoftext_special(trained, tmp_path):
    tokenizer = load_tokenizer(export_vocab_and_merges(trained, tmp_path))
    assert tokenizer.special_tokens["<|endoftext|>"] == trained.eos_id
    assert tokenizer.encode("a<|endoftext|>") == trained.encode("a<|endoftext|>")


def test_eos_from_tokenizer_config(trained, tmp_path):
    trained.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    assert load_tokenizer(tmp_path).eos_id == trained.token_to_id("<|im_end|>")
    assert load_tokenizer(tmp_path, eos_token="<|im_start|>").eos_id == trained.token_to_id("<|im_start|>")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent.json", "does not exist"),
        (lambda root: root, "holds neither tokenizer.json nor vocab.json"),
        (lambda root: _write(root / "tokenizer.json", "{not json"), "is not a valid tokenizer.json"),
        (lambda root: _write(root / "notes.txt", "hello"), "cannot tell the tokenizer format"),
        (lambda root: _write(root / "vocab.json", "{}"), "merges file .* is missing"),
    ],
)
def test_bad_paths_are_user_errors(tmp_path, make, message):
    with pytest.raises(LmforgeError, match=message):
        load_tokenizer(make(tmp_path))


def test_bad_merges_line_is_named(trained, tmp_path):
    vocab_file = export_vocab_and_merges(trained, tmp_path)
    merges = tmp_path / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "nosuch token\n", encoding="utf-8")
    lines = len(merges.read_text(encoding="utf-8").splitlines())
    with pytest.raises(LmforgeError, match=rf"merges.txt:{lines}: 'nosuch token' is not a merge"):
        load_tokenizer(vocab_file)


def test_options_do_not_apply_to_tokenizer_json(trained, tmp_path):
    with pytest.raises(LmforgeError, match="drop those options"):
        load_tokenizer(trained.save(tmp_path), split_pattern=r"\s+")


def test_unknown_eos_token_is_named(trained, tmp_path):
    with pytest.raises(LmforgeError, match="'<eot>' is not in the vocabulary"):
        load_tokenizer(trained.save(tmp_path), eos_token="<eot>")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
