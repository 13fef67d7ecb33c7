"""Special ids of decoding from generation.json and the tokenizer, read in one place."""

from __future__ import annotations

from lmforge.tokenizer import train_tokenizer
from lmforge.tokenizer.special_ids import special_ids


def test_stops_join_the_eos_and_bos_comes_from_generation_json():
    tokenizer = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=280)
    eos = tokenizer.eos_id
    assert eos is not None
    names = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
    ids = special_ids({"stop_token_ids": [5], "bos_token_id": eos}, tokenizer)
    assert ids.stop_ids == {5, eos} and ids.bos_id == eos
    assert ids.template_tokens() == {"bos_token": names[eos], "eos_token": names[eos]}
    bare = special_ids({}, tokenizer)
    assert bare.stop_ids == {eos} and bare.bos_id is None and bare.bos_token == ""
