"""BM25 scores equal the reference packages' on real text; search, batching and storage agree."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.retrieval import BM25Index, postings
from lmforge.retrieval.analyzers import make_analyzer

rank_bm25 = pytest.importorskip("rank_bm25")
bm25s = pytest.importorskip("bm25s")

SETTINGS = [(1.5, 0.75), (1.2, 0.5), (2.0, 1.0), (0.9, 0.0)]  # (k1, b)
QUERIES = [
    "the",  # in many documents
    "regular expression pattern",
    "logging handler logging handler",  # repeated terms count once per occurrence
    "convert command line strings to python objects",
    "json decoder error",
    "zzzunseen",  # out of vocabulary: matches nothing
    "iterator zzzunseen of the",
    "",
]


@pytest.fixture(scope="module")
def analyzer():
    return make_analyzer("simple")


@pytest.fixture(scope="module")
def tokens(english_lines, analyzer):
    return [analyzer(line) for line in english_lines]


def scores_agree(index, reference, analyzer, tolerance):
    for query in QUERIES:
        expected = reference(analyzer(query))
        np.testing.assert_allclose(index.scores(query), expected, rtol=tolerance, atol=tolerance, err_msg=query)


@pytest.mark.parametrize("k1,b", SETTINGS)
def test_okapi_equals_rank_bm25(english_lines, tokens, analyzer, k1, b):
    index = BM25Index.build(english_lines, analyzer="simple", variant="okapi", k1=k1, b=b)
    reference = rank_bm25.BM25Okapi(tokens, k1=k1, b=b, epsilon=0.25)
    scores_agree(index, reference.get_scores, analyzer, 1e-9)


@pytest.mark.parametrize("k1,b", SETTINGS)
@pytest.mark.parametrize("delta", [1.0, 0.5])
def test_bm25plus_equals_rank_bm25(english_lines, tokens, analyzer, k1, b, delta):
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25+", k1=k1, b=b, delta=delta)
    reference = rank_bm25.BM25Plus(tokens, k1=k1, b=b, delta=delta)
    scores_agree(index, reference.get_scores, analyzer, 1e-9)


def bm25s_scores(tokens, method, k1, b, **options):
    retriever = bm25s.BM25(method=method, k1=k1, b=b, **options)
    retriever.index(tokens, show_progress=False)

    def score(query_tokens):
        known = [token for token in query_tokens if token in retriever.vocab_dict]
        return retriever.get_scores(known) if known else np.zeros(len(tokens))

    return score


@pytest.mark.parametrize("k1,b", SETTINGS)
def test_lucene_equals_bm25s(english_lines, tokens, analyzer, k1, b):
    index = BM25Index.build(english_lines, analyzer="simple", variant="lucene", k1=k1, b=b)
    scores_agree(index, bm25s_scores(tokens, "lucene", k1, b), analyzer, 1e-5)  # bm25s keeps float32


@pytest.mark.parametrize("k1,b", SETTINGS)
def test_bm25l_equals_bm25s(english_lines, tokens, analyzer, k1, b):
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25l", k1=k1, b=b, delta=0.5)
    scores_agree(index, bm25s_scores(tokens, "bm25l", k1, b, delta=0.5), analyzer, 1e-5)


def test_bm25l_equals_rank_bm25_where_its_released_formula_is_right(english_lines, tokens, analyzer):
    """rank_bm25 0.2.2's BM25L multiplies each term's score by its frequency f, fixed upstream in
    dorianbrown/rank_bm25#20: for f = 1 the two agree, and they must."""
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25l")
    reference = rank_bm25.BM25L(tokens, k1=1.5, b=0.75, delta=0.5)
    for term in ["regular", "logging", "string", "the", "object"]:
        once = np.array([document.count(term) == 1 for document in tokens])
        assert once.any()
        np.testing.assert_allclose(index.scores(term)[once], reference.get_scores([term])[once], rtol=1e-12)


def test_negative_idf_becomes_epsilon_times_mean_idf():
    texts = ["common rare", "common", "common word", "common other", "unrelated text"]
    tokens = [text.split() for text in texts]
    raw_idf = {term: np.log(5 - n + 0.5) - np.log(n + 0.5) for term, n in _document_frequencies(tokens).items()}
    assert raw_idf["common"] < 0  # in 4 of the 5 documents
    length_factor = 1.5 * (1 - 0.75 + 0.75 * 1 / 1.8)  # K for document 1: dl = 1, avgdl = 9 / 5
    for epsilon in [0.25, 0.0, 1.0]:
        index = BM25Index.build(texts, analyzer="whitespace", epsilon=epsilon)
        floored_idf = epsilon * np.mean(list(raw_idf.values()))
        assert index.scores("common")[1] == pytest.approx(floored_idf * 2.5 / (1 + length_factor))
        reference = rank_bm25.BM25Okapi(tokens, epsilon=epsilon)
        np.testing.assert_allclose(index.scores("common rare"), reference.get_scores(["common", "rare"]), rtol=1e-12)
    lucene = BM25Index.build(texts, analyzer="whitespace", variant="lucene")
    assert (lucene.scores("common")[:4] > 0).all()  # lucene's IDF never goes negative


def _document_frequencies(tokens):
    frequencies: dict[str, int] = {}
    for document in tokens:
        for term in set(document):
            frequencies[term] = frequencies.get(term, 0) + 1
    return frequencies


def test_repeated_and_unknown_query_terms():
    texts = ["apple banana", "banana cherry", "cherry date", "date elder", "apple apple fig"]
    index = BM25Index.build(texts, analyzer="simple")
    once, twice = index.scores("apple"), index.scores("apple apple")
    np.testing.assert_allclose(twice, 2 * once)  # k2 = 0: each occurrence counts
    np.testing.assert_array_equal(index.scores("apple zzz"), once)  # unknown terms add nothing
    saturated = BM25Index.build(texts, analyzer="simple", k2=1.0)
    # k2 = 1: a term twice in the query gets qf · (k2 + 1) / (qf + k2) = 4/3 per occurrence
    np.testing.assert_allclose(saturated.scores("apple apple"), 2 * (4 / 3) * once)


def test_search_is_the_top_of_the_scores_ties_by_document_order(english_lines):
    index = BM25Index.build(english_lines + english_lines[:50], analyzer="simple")  # duplicates tie
    for query in QUERIES:
        scores = index.scores(query)
        matched = np.flatnonzero(scores)
        expected = sorted(matched.tolist(), key=lambda document: (-scores[document], document))[:7]
        results = index.search(query, k=7)
        assert [document for document, _ in results] == expected, query
        assert [score for _, score in results] == scores[expected].tolist()


def test_search_many_equals_search_one_by_one(english_lines):
    for variant in ["okapi", "bm25+", "bm25l", "lucene"]:
        index = BM25Index.build(english_lines, analyzer="simple", variant=variant)
        assert index.search_many(QUERIES, k=5) == [index.search(query, k=5) for query in QUERIES]


def test_a_batch_split_into_bounded_products_gives_the_same_results(english_lines, monkeypatch):
    index = BM25Index.build(english_lines, analyzer="simple", variant="bm25+")
    expected = index.search_many(QUERIES * 3, k=5)
    monkeypatch.setattr(postings, "PRODUCT_POSTINGS", 16)  # about one query a product
    assert index.search_many(QUERIES * 3, k=5) == expected
    assert index.search_many([], k=5) == []


def test_queries_without_known_terms_give_empty_results():
    index = BM25Index.build(["the cat", "a dog", "a bird"], analyzer="simple", stopwords="en")
    assert index.search("", k=3) == []
    assert index.search("the a", k=3) == []  # only stop words
    assert index.search_many(["", "cat", "unknown"], k=3) == [[], index.search("cat", k=3), []]
    assert [document_id for document_id, _ in index.search("cat")] == [0]


def test_k_must_be_at_least_one(english_lines):
    index = BM25Index.build(english_lines[:20], analyzer="simple")
    for k in [0, -3]:
        with pytest.raises(LmforgeError, match="at least 1"):
            index.search("the", k=k)


def test_ids_and_passages():
    index = BM25Index.build(["red apple", "green pear", "red cherry"], ids=["a", "b", "c"], analyzer="simple")
    assert [document_id for document_id, _ in index.search("red")] == ["a", "c"]
    passages = index.search_passages(["pear"], k=2)[0]
    assert [(passage.id, passage.text) for passage in passages] == [("b", "green pear")]


@pytest.mark.parametrize(
    "texts,ids,message",
    [
        ([], None, "no documents"),
        (["!!!", "..."], None, "none of the 2 documents has a term"),
        (["a", "b"], ["x", "x"], "used twice"),
        (["a", "b"], [1, "two"], "one type"),
        (["a", "b"], [1.5, 2.5], "integers or strings"),
        (["a", "b"], [1], "more texts"),
        (["a"], [1, 2], "more ids"),
    ],
)
def test_bad_corpora_are_errors_for_people(texts, ids, message):
    with pytest.raises(LmforgeError, match=message):
        BM25Index.build(texts, ids=ids, analyzer="simple")


@pytest.mark.parametrize(
    "option,message",
    [({"variant": "bm26"}, "--variant"), ({"k1": 0}, "--k1"), ({"b": 1.5}, "--b"), ({"k2": -1}, "--k2"),
     ({"epsilon": -0.1}, "--epsilon"), ({"delta": -1}, "--delta"), ({"analyzer": "porter"}, "--analyzer"),
     ({"stopwords": "klingon"}, "--stopwords")],
)
def test_bad_parameters_name_the_option(option, message):
    with pytest.raises(LmforgeError, match=message):
        BM25Index.build(["some text"], **option)


@pytest.mark.parametrize("variant", ["okapi", "bm25+"])
def test_save_then_load_gives_identical_results(english_lines, tmp_path, variant):
    index = BM25Index.build(english_lines, ids=[f"line-{n}" for n in range(len(english_lines))],
                            analyzer="simple", stopwords="en", stem=True, variant=variant)
    index.save(tmp_path / "idx")
    expected = index.search_many(QUERIES, k=10)
    for mmap in [True, False]:
        loaded = BM25Index.load(tmp_path / "idx", mmap=mmap)
        assert isinstance(loaded.postings.weights, np.memmap) == mmap
        assert loaded.analyzer == index.analyzer and loaded.parameters == index.parameters
        assert loaded.search_many(QUERIES, k=10) == expected
        assert [loaded.search(query, k=10) for query in QUERIES] == expected
        first = loaded.search_passages(["regular expression"], k=1)[0][0]
        assert first.text == english_lines[int(first.id.removeprefix("line-"))]


def test_save_is_atomic_and_never_clobbers(tmp_path):
    index = BM25Index.build(["one text", "two texts"], analyzer="simple")
    target = tmp_path / "idx"
    index.save(target)
    with pytest.raises(LmforgeError, match="--overwrite"):
        index.save(target)
    BM25Index.build(["three"], analyzer="simple").save(target, overwrite=True)
    assert len(BM25Index.load(target)) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["idx"]  # no temporary left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(LmforgeError, match="not a BM25 index .it holds 'todo.txt'"):
        index.save(tmp_path / "notes", overwrite=True)
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")  # nothing in it to lose
    assert len(BM25Index.load(tmp_path / "empty")) == 2


def test_corrupt_or_foreign_directories_are_refused(tmp_path):
    BM25Index.build(["one text", "two texts"], analyzer="simple").save(tmp_path / "idx")
    with pytest.raises(LmforgeError, match="no such index directory"):
        BM25Index.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmforgeError, match="no meta.json"):
        BM25Index.load(tmp_path / "empty")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(LmforgeError, match="not an lmforge BM25 index"):
        BM25Index.load(tmp_path / "foreign")
    (tmp_path / "idx" / "postings_weights.npy").write_bytes(b"garbage")
    with pytest.raises(LmforgeError, match="rebuild it"):
        BM25Index.load(tmp_path / "idx")
    np.save(tmp_path / "idx" / "postings_weights.npy", np.zeros(1))
    with pytest.raises(LmforgeError, match="do not agree"):
        BM25Index.load(tmp_path / "idx")
    (tmp_path / "idx" / "meta.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="not valid JSON"):
        BM25Index.load(tmp_path / "idx")
