"""`lmforge bm25 index | search`, in-process through the real CLI parser and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmforge.cli import run
from lmforge.retrieval import BM25Index

PASSAGES = [
    {"id": "reset", "text": "To reset your password open Settings, then Security, then Reset password."},
    {"id": "router", "text": "Reset the router by holding its button for ten seconds."},
    {"id": "billing", "text": "Invoices are sent on the first day of each month."},
    {"id": "cats", "text": "The cat sat on the mat."},
    {"id": "dogs", "text": "A dog barked at the cat.\nIt ran away."},
    {"id": "refund", "text": "Refunds reach your card within five working days."},
]


# `lmforge ARGS...` in a fresh interpreter that fails if the command imported torch.
MAIN_WITHOUT_TORCH = (
    "import sys\nfrom lmforge.cli import main\n"
    "try:\n    main(sys.argv[1:])\nfinally:\n    assert 'torch' not in sys.modules, 'bm25 imported torch'\n"
)
ENVIRONMENT = {**os.environ, "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25")
    with open(root / "faq.jsonl", "w", encoding="utf-8") as file:
        file.writelines(json.dumps(passage) + "\n" for passage in PASSAGES)
    assert run(["bm25", "index", str(root / "faq.jsonl"), "--out", str(root / "idx"), "--stopwords", "en"]) == 0
    return root / "idx"


def test_index_then_search_json(index_dir, capsys):
    assert run(["bm25", "search", str(index_dir), "--query", "how do I reset my password", "--k", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["id"] for result in results] == ["reset", "router"]
    assert results[0]["text"] == PASSAGES[0]["text"]
    assert (results[0]["document"], results[0]["span"]) == ("reset", [0, len(PASSAGES[0]["text"])])  # a passage is a document
    assert results[0]["score"] > results[1]["score"] > 0
    expected = BM25Index.load(index_dir).search("how do I reset my password", k=2)
    assert [(result["id"], result["score"]) for result in results] == expected


def test_search_table(index_dir, capsys):
    assert run(["bm25", "search", str(index_dir), "--query", "cat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "text"]
    assert lines[1].split()[0] == "1" and "cats" in lines[1] and "dogs" in lines[2]
    assert "A dog barked at the cat. It ran away." in lines[2]  # a passage stays on one line


def test_queries_file_gives_one_json_line_a_query(index_dir, tmp_path, capsys):
    (tmp_path / "q.txt").write_text("refund to my card\n\nthe\ncat\n", encoding="utf-8")
    assert run(["bm25", "search", str(index_dir), "--queries", str(tmp_path / "q.txt"), "--k", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[result["id"] for result in results] for results in lines] == [["refund"], [], [], ["cats"]]


def test_unmatched_query_is_an_empty_answer_not_an_error(index_dir, capsys):
    assert run(["bm25", "search", str(index_dir), "--query", "the of and", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert run(["bm25", "search", str(index_dir), "--query", "zebra"]) == 0
    assert "no passage matches" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--query", "cat", "--k", "0"], "--k must be at least 1"),
        (["--query", "cat", "--queries", "q.txt"], "exactly one of --query"),
        ([], "exactly one of --query"),
        (["--queries", "/nonexistent/q.txt"], "no such file"),
    ],
)
def test_search_errors_are_one_line_and_exit_1(index_dir, capsys, argv, message):
    assert run(["bm25", "search", str(index_dir), *argv]) == 1
    error = capsys.readouterr().err
    assert error.startswith("lmforge: error: ") and message in error and error.count("\n") == 1


def test_index_errors(tmp_path, index_dir, capsys):
    (tmp_path / "a.jsonl").write_text('{"body": "no text field"}\n', encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine", encoding="utf-8")
    cases = [
        ([str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "x")], "a.jsonl:1: no field 'text'"),
        ([str(tmp_path / "empty.txt"), "--out", str(tmp_path / "x")], "no documents to index"),
        ([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")], "no such file"),
        ([str(tmp_path / "empty.txt"), "--out", str(index_dir)], "--overwrite"),
        # refused before the input is read: --overwrite replaces only an index
        ([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "notes"), "--overwrite"], "is not a BM25 index"),
    ]
    for argv, message in cases:
        assert run(["bm25", "index", *argv]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert [path.name for path in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    assert run(["bm25", "search", str(tmp_path / "foreign"), "--query", "x"]) == 1
    assert "is not a BM25 index" in capsys.readouterr().err


def test_every_index_option_reaches_the_index(tmp_path, capsys):
    (tmp_path / "docs.txt").write_text("Running shoes\nA pair of shoes\nBooks about cooking\n", encoding="utf-8")
    argv = ["bm25", "index", str(tmp_path / "docs.txt"), "--out", str(tmp_path / "idx"), "--analyzer", "cjk-bigram",
            "--stopwords", "en", "--stem", "--variant", "bm25l", "--k1", "1.2", "--b", "0.5", "--k2", "1",
            "--epsilon", "0.1", "--delta", "0.7"]
    assert run(argv) == 0
    index = BM25Index.load(tmp_path / "idx")
    assert (index.analyzer.name, index.analyzer.stem, "the" in index.analyzer.stopwords) == ("cjk-bigram", True, True)
    assert index.parameters.to_json() == {"variant": "bm25l", "k1": 1.2, "b": 0.5, "k2": 1.0, "epsilon": 0.1, "delta": 0.7}
    assert run(argv + ["--overwrite", "--text-field", "ignored-for-txt"]) == 0


def test_subprocess_exit_codes_and_no_torch(index_dir):
    argv = ["bm25", "search", str(index_dir), "--query", "refunds", "--json"]
    found = subprocess.run([sys.executable, "-c", MAIN_WITHOUT_TORCH, *argv], capture_output=True, text=True, env=ENVIRONMENT,
                           check=False)
    assert found.returncode == 0 and json.loads(found.stdout)[0]["id"] == "refund"
    missing = subprocess.run([sys.executable, "-m", "lmforge", "bm25", "search", str(index_dir) + "-nope", "--query", "x"],
                             capture_output=True, text=True, env=ENVIRONMENT, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("lmforge: error: ") and "Traceback" not in missing.stderr


def test_an_empty_result_says_why(tmp_path, capsys):
    (tmp_path / "two.txt").write_text("apple pie\nbanana split\n", encoding="utf-8")
    assert run(["bm25", "index", str(tmp_path / "two.txt"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    # "apple" is in one passage of two: Okapi's IDF log((N - n + 0.5) / (n + 0.5)) is exactly 0.
    assert run(["bm25", "search", str(tmp_path / "idx"), "--query", "apple"]) == 0
    assert "its indexed terms (apple) score zero or less" in capsys.readouterr().out
    assert run(["bm25", "search", str(tmp_path / "idx"), "--query", "cherry"]) == 0
    assert "no query term is in the index" in capsys.readouterr().out


CHUNKED = {
    "manual": "To reset your password open Settings, then Security, then Reset password. Reset the router by "
              "holding its button for ten seconds. Invoices are sent on the first day of each month.",
    "zh": "重置路由器：按住按钮十秒钟。发票在每个月的第一天寄出。退款会在五个工作日内到账。🤖👨‍👩‍👧",
}


@pytest.fixture(scope="module")
def chunked_root(tmp_path_factory):
    """A checkpoint-like directory holding a tokenizer.json (trained on English only, so Chinese
    characters and emoji are several byte tokens each), and documents to cut into passages."""
    from lmforge.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("bm25-chunks")
    train_tokenizer([passage["text"] for passage in PASSAGES] * 10, vocab_size=300).save(root / "run")
    with open(root / "docs.jsonl", "w", encoding="utf-8") as file:
        file.writelines(json.dumps({"id": key, "text": text}, ensure_ascii=False) + "\n" for key, text in CHUNKED.items())
    return root


def test_chunked_index_gives_passages_with_document_and_span(chunked_root, capsys):
    out = chunked_root / "idx"
    assert run(["bm25", "index", str(chunked_root / "docs.jsonl"), "--out", str(out), "--chunk-tokens", "16",
                "--chunk-overlap", "4", "--tokenizer", str(chunked_root / "run"), "--variant", "lucene"]) == 0
    assert "passages of 2 documents" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["chunking"] == {"chunk_tokens": 16, "overlap": 4, "tokenizer": str(chunked_root / "run")}
    assert run(["bm25", "search", str(out), "--query", "reset the router 路由器 退款", "--k", "100", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {result["document"] for result in results} == {"manual", "zh"} and len(results) > 2
    for result in results:
        assert result["id"].startswith(result["document"] + "#")
        start, end = result["span"]
        assert result["text"] == CHUNKED[result["document"]][start:end]
    assert run(["bm25", "search", str(out), "--query", "router"]) == 0
    assert "manual#" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--chunk-tokens", "16"], "name its tokenizer with --tokenizer"),
        (["--chunk-tokens", "16", "--chunk-overlap", "16", "--tokenizer", "run"], "--chunk-overlap 16 must be"),
        (["--chunk-tokens", "0", "--tokenizer", "run"], "--chunk-tokens must be"),
        (["--chunk-overlap", "2"], "--chunk-overlap applies only"),
        (["--tokenizer", "run"], "--tokenizer applies only"),
        (["--chunk-tokens", "16", "--tokenizer", "missing"], "does not exist"),
    ],
)
def test_bad_chunking_options_are_one_line_errors(chunked_root, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(chunked_root)
    assert run(["bm25", "index", "docs.jsonl", "--out", "bad-idx", *argv]) == 1
    error = capsys.readouterr().err
    assert error.startswith("lmforge: error: ") and message in error and error.count("\n") == 1
    assert not (chunked_root / "bad-idx").exists()


def test_chunking_subprocess_needs_no_torch_and_fails_cleanly(chunked_root):
    argv = ["bm25", "index", str(chunked_root / "docs.jsonl"), "--chunk-tokens", "8", "--tokenizer", str(chunked_root / "run")]
    built = subprocess.run([sys.executable, "-c", MAIN_WITHOUT_TORCH, *argv, "--out", str(chunked_root / "sub-idx")],
                           capture_output=True, text=True, env=ENVIRONMENT, check=False)
    assert built.returncode == 0, built.stderr
    refused = subprocess.run([sys.executable, "-m", "lmforge", *argv, "--chunk-overlap", "9", "--out", str(chunked_root / "x")],
                             capture_output=True, text=True, env=ENVIRONMENT, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("lmforge: error: --chunk-overlap 9")
    assert "Traceback" not in refused.stderr
