"""Passages of at most N tokens sharing M, cut at character boundaries of byte-level BPE tokens;
stored with their document and span, and read back from old indexes that have none."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.retrieval import BM25Index
from lmforge.retrieval.chunks import Chunking, passage_spans
from lmforge.tokenizer import train_tokenizer

# A tiny vocabulary: rare Chinese characters and emoji stay one token a byte, and some tokens
# hold the end of one character and the start of the next ("机器" as 'æľ' 'ºå' 'Ļ' '¨').
TRAINING = ["The quick brown fox jumps over the lazy dog. Passwords must have twelve characters.",
            "机器学习是人工智能的一个分支，语言模型可以生成中文文本。", "emoji 😀 and 🎉"]
TEXTS = {
    "english": "Reset the router by holding its button for ten seconds, then wait until the light turns green "
               "again. Invoices are sent on the first day of each month; refunds reach your card within five days.",
    "chinese": "蠢蠢欲动的龘龘。机器学习是人工智能的一个分支，语言模型可以生成中文文本。"
               "迈向充满希望的新世纪——一九九八年新年讲话。",
    "emoji": "emoji 🤖🎉 and a family 👨‍👩‍👧 with flags 🇨🇳🇬🇧, 😀😃😄😁 naïve café",
    "code": "def greet(name: str) -> str:\n    return f\"Hello, {name}!\"  # 你好 👋\n\n\tif x:\n\t\tpass\n",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TRAINING * 10, vocab_size=300)


def token_spans_of(tokenizer):
    return lambda texts: [encoding.offsets for encoding in tokenizer.backend.encode_batch(texts, add_special_tokens=False)]


def boundary_of(tokenizer, text):
    """char offset -> the number of tokens before it; None when the offset falls inside a token,
    that is when a cut there would split a token (and the character it holds part of)."""
    tokens = tokenizer.backend.encode(text, add_special_tokens=False).tokens
    byte_ends = [0, *itertools.accumulate(map(len, tokens))]  # a byte-level token: one symbol a byte
    assert byte_ends[-1] == len(text.encode())
    token_count = {byte: count for count, byte in enumerate(byte_ends)}
    return lambda offset: token_count.get(len(text[:offset].encode()))


@pytest.mark.parametrize("name", list(TEXTS))
@pytest.mark.parametrize("chunk_tokens,overlap", [(3, 0), (6, 0), (6, 2), (5, 4), (16, 5), (1000, 0)])
def test_passages_keep_characters_whole_and_tile_the_text(tokenizer, name, chunk_tokens, overlap):
    text = TEXTS[name]
    offsets = tokenizer.backend.encode(text, add_special_tokens=False).offsets
    spans = passage_spans(len(text), offsets, chunk_tokens, overlap)
    boundary = boundary_of(tokenizer, text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(boundary(start) is not None and boundary(end) is not None for start, end in spans)
    rebuilt = text[: spans[0][1]]
    for (start, end), (next_start, next_end) in itertools.pairwise(spans):
        assert start < next_start <= end < next_end
        assert boundary(end) - boundary(next_start) <= overlap  # shared tokens
        rebuilt += text[end:next_end]
    assert rebuilt == text  # the passages minus their overlaps are the document
    for start, end in spans:  # only a run of tokens with no character boundary between them outgrows a passage
        assert boundary(end) - boundary(start) <= chunk_tokens or all(boundary(inner) is None for inner in range(start + 1, end))


def test_the_tiny_vocabulary_splits_characters(tokenizer):
    """The cases the chunker must handle are really there: a character in several tokens, and a
    token holding the end of one character and the start of the next."""
    offsets = tokenizer.backend.encode(TEXTS["chinese"], add_special_tokens=False).offsets
    assert (0, 1) in offsets and offsets.count((0, 1)) == 3
    assert any(end - start == 2 for start, end in offsets)


@pytest.mark.parametrize("chunk_tokens,overlap", [(7, 0), (7, 3), (10, 9)])
def test_where_no_cut_moves_passages_hold_n_tokens_and_share_m(tokenizer, chunk_tokens, overlap):
    text = TEXTS["english"]
    spans = passage_spans(len(text), tokenizer.backend.encode(text, add_special_tokens=False).offsets, chunk_tokens, overlap)
    boundary = boundary_of(tokenizer, text)
    assert [boundary(end) - boundary(start) for start, end in spans[:-1]] == [chunk_tokens] * (len(spans) - 1)
    assert [boundary(end) - boundary(next_start) for (_, end), (next_start, _) in itertools.pairwise(spans)] == \
        [overlap] * (len(spans) - 1)


# "蠢欲动龘": each character is three byte tokens with the character's span.
CHINESE_BYTES = [(char, char + 1) for char in range(4) for _ in range(3)]


@pytest.mark.parametrize(
    "chunk_tokens,overlap,expected",
    [
        (4, 0, [(0, 1), (1, 2), (2, 3), (3, 4)]),  # the cut after 4 tokens moves back to 3
        (7, 0, [(0, 2), (2, 4)]),
        (7, 2, [(0, 2), (2, 4)]),  # the next start, 2 tokens back, would split a character: moves forward
        (6, 3, [(0, 2), (1, 3), (2, 4)]),
        (2, 0, [(0, 1), (1, 2), (2, 3), (3, 4)]),  # a character of 3 tokens stays whole in a passage of 2
        (2, 1, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    ],
)
def test_cuts_move_to_character_boundaries(chunk_tokens, overlap, expected):
    assert passage_spans(4, CHINESE_BYTES, chunk_tokens, overlap) == expected


def test_a_token_across_two_characters_is_never_cut():
    # "ab€": 'a', then 'b' with the first byte of '€', then its last two bytes.
    spans = [(0, 1), (1, 3), (2, 3)]
    assert passage_spans(3, spans, 1, 0) == [(0, 1), (1, 3)]
    assert passage_spans(3, spans, 2, 1) == [(0, 1), (1, 3)]


def test_short_or_empty_texts_are_one_passage():
    assert passage_spans(0, [], 4, 0) == [(0, 0)]
    assert passage_spans(9, [(0, 4), (4, 9)], 2, 1) == [(0, 9)]


@pytest.mark.parametrize(
    "chunk_tokens,overlap,message",
    [(0, 0, "--chunk-tokens must be"), (-3, 0, "--chunk-tokens must be"), (2.5, 0, "--chunk-tokens must be"),
     (4, 4, "--chunk-overlap 4 must be"), (4, -1, "--chunk-overlap -1 must be"), (4, True, "--chunk-overlap")],
)
def test_bad_chunking_names_the_option(chunk_tokens, overlap, message):
    with pytest.raises(LmforgeError, match=message):
        Chunking(chunk_tokens, overlap)


DOCUMENTS = {"router": TEXTS["english"], "zh": TEXTS["chinese"], "short": "The lazy dog.", "blank": ""}


def test_a_chunked_index_keeps_each_passages_document_and_span(tokenizer, tmp_path):
    chunking = Chunking(12, 3, "tiny.json")
    index = BM25Index.build(DOCUMENTS.values(), ids=DOCUMENTS.keys(), analyzer="cjk-bigram", chunking=chunking,
                            token_spans=token_spans_of(tokenizer))
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["chunking"] == {"chunk_tokens": 12, "overlap": 3, "tokenizer": "tiny.json"}
    assert (meta["source_documents"], meta["document_ids"], meta["documents"]) == (4, "str", len(index))
    for loaded in (index, BM25Index.load(tmp_path / "idx", mmap=True), BM25Index.load(tmp_path / "idx", mmap=False)):
        assert loaded.sources.chunking == chunking
        every = loaded.search_passages(["router 机器 invoices"], k=len(loaded))[0]
        assert every
        for passage in every:
            document, number = passage.id.rsplit("#", 1)
            assert passage.document == document and int(number) >= 0
            assert passage.text == DOCUMENTS[document][passage.span[0] : passage.span[1]]
    assert [index.ids[len(index) - 2], index.ids[len(index) - 1]] == ["short#0", "blank#0"]  # short: one passage
    assert index.sources.at(np.array([len(index) - 1])) == [("blank", (0, 0))]


def test_any_tokenizer_will_do_and_integer_document_ids_stay_integers(tmp_path):
    def words(texts):  # a "tokenizer" of whitespace-separated words
        return [[match.span() for match in re.finditer(r"\S+", text)] for text in texts]

    text = "alpha beta gamma delta epsilon zeta eta theta"
    index = BM25Index.build([text, "beta"], analyzer="simple", variant="lucene", chunking=Chunking(3, 1), token_spans=words)
    index.save(tmp_path / "idx")
    passages = BM25Index.load(tmp_path / "idx").search_passages(["beta epsilon theta"], k=10)[0]
    assert sorted((passage.id, passage.document, passage.text) for passage in passages) == [
        ("0#0", 0, "alpha beta gamma"), ("0#1", 0, " gamma delta epsilon"), ("0#2", 0, " epsilon zeta eta"),
        ("0#3", 0, " eta theta"), ("1#0", 1, "beta")]  # a space no token covers goes with the token after it


def test_an_index_without_chunking_is_written_as_before(tmp_path):
    index = BM25Index.build(["red apple", "green pear", "red cherry"], ids=["a", "b", "c"], analyzer="simple")
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert not {"chunking", "source_documents", "document_ids"} & set(meta)
    assert not list((tmp_path / "idx").glob("*passage*")) and not list((tmp_path / "idx").glob("document_ids*"))
    [passage] = BM25Index.load(tmp_path / "idx").search_passages(["pear"], k=2)[0]
    assert (passage.id, passage.document, passage.span, passage.text) == ("b", "b", (0, 10), "green pear")


def test_chunking_needs_the_tokenizers_offsets():
    with pytest.raises(LmforgeError, match="token_spans"):
        BM25Index.build(["some text"], chunking=Chunking(4))


def test_damaged_spans_are_refused(tokenizer, tmp_path):
    BM25Index.build(["one two three four five six", "seven"], analyzer="simple", chunking=Chunking(2),
                    token_spans=token_spans_of(tokenizer)).save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "passage_spans.npy", np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(LmforgeError, match="do not agree"):
        BM25Index.load(tmp_path / "idx")
