"""The Porter stemmer reproduces the examples of Porter (1980), step by step and end to end."""

from __future__ import annotations

import pytest

from lmforge.retrieval.stemmer import porter_stem

PAPER_EXAMPLES = {
    # step 1a
    "caresses": "caress", "ponies": "poni", "ties": "ti", "caress": "caress", "cats": "cat",
    # step 1b
    "feed": "feed", "agreed": "agre", "plastered": "plaster", "bled": "bled", "motoring": "motor",
    "sing": "sing", "conflated": "conflat", "troubled": "troubl", "sized": "size", "hopping": "hop",
    "tanned": "tan", "falling": "fall", "hissing": "hiss", "fizzed": "fizz", "failing": "fail", "filing": "file",
    # step 1c
    "happy": "happi", "sky": "sky",
    # steps 2 to 5, through the later steps
    "relational": "relat", "conditional": "condit", "rational": "ration", "valenci": "valenc",
    "digitizer": "digit", "conformabli": "conform", "radicalli": "radic", "differentli": "differ",
    "vietnamization": "vietnam", "predication": "predic", "operator": "oper", "feudalism": "feudal",
    "decisiveness": "decis", "hopefulness": "hope", "callousness": "callous", "formaliti": "formal",
    "sensitiviti": "sensit", "sensibiliti": "sensibl", "triplicate": "triplic", "formative": "form",
    "electriciti": "electr", "electrical": "electr", "goodness": "good", "revival": "reviv",
    "allowance": "allow", "inference": "infer", "airliner": "airlin", "adjustable": "adjust",
    "defensible": "defens", "irritant": "irrit", "replacement": "replac", "adjustment": "adjust",
    "dependent": "depend", "adoption": "adopt", "communism": "commun", "activate": "activ",
    "homologous": "homolog", "effective": "effect", "bowdlerize": "bowdler", "probate": "probat",
    "rate": "rate", "cease": "ceas", "controll": "control", "roll": "roll", "generalizations": "gener",
}


@pytest.mark.parametrize("word,stem", PAPER_EXAMPLES.items())
def test_paper_examples(word, stem):
    assert porter_stem(word) == stem


@pytest.mark.parametrize("word", ["is", "北京", "c3po", "Running", "naïve", "42"])
def test_short_or_non_english_words_pass_through(word):
    assert porter_stem(word) == word
