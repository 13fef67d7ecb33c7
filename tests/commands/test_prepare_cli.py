import json

import numpy as np
import pytest

from lmforge.cli import main

WORDS = "the of and to with that have river valley farmers settled banks seasonal floods rich soil market towns temples grain".split()
SPAM = "click free win casino bonus cheap prize deal discount hurry now offer".split()


def lines(rng, words, count, length):
    return "\n".join(" ".join(rng.choice(words, size=length)) for _ in range(count)) + "\n"


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "news.txt").write_text(
        "\n".join("１９９８年/t  " + " ".join(f"{word}/n" for word in rng.choice(WORDS, size=60)) for _ in range(40)) + "\n", encoding="utf-8"
    )
    with open(tmp_path / "chat.jsonl", "w", encoding="utf-8") as file:
        for _ in range(40):
            file.write(json.dumps({"messages": [{"content": " ".join(rng.choice(WORDS, size=40))}, {"content": " ".join(rng.choice(WORDS, size=30))}]}) + "\n")
    (tmp_path / "recipe.yaml").write_text(
        """
read:
  unit: line
  text_field: messages[].content
clean:
  substitutions:
    - pattern: '/[A-Za-z]+(?=\\s|$)'
      replacement: ''
filters:
  min_words: 60
  max_top_ngram_chars: {2: 0.5}
mix:
  epochs: {news: 2.0}
vocab_size: 300
val_fraction: 0.1
""",
        encoding="utf-8",
    )
    return tmp_path


def test_prepare_from_the_command_line_with_a_recipe(corpus, capsys):
    out = corpus / "data"
    main(["prepare", "--config", str(corpus / "recipe.yaml"), "--input", f"news={corpus / 'news.txt'}",
          "--input", f"chat={corpus / 'chat.jsonl'}", "--out", str(out), "--filters.min-words", "50", "--workers", "2"])
    printed = capsys.readouterr().out
    assert "dedup" in printed and "achieved" in printed
    report = json.loads((out / "report.json").read_text())
    recipe = report["recipe"]
    assert recipe["filters"]["min_words"] == 50 and recipe["filters"]["max_top_ngram_chars"] == {"2": 0.5}
    assert recipe["read"]["unit"] == "line" and recipe["tokenize"]["vocab_size"] == 300
    assert [source["name"] for source in recipe["sources"]] == ["news", "chat"]
    assert report["mixture"]["news"]["epochs"] == 2.0
    steps = {step["step"]: step for step in report["steps"]}
    assert steps["read"]["documents_in"] == 80
    assert steps["quality_rules"]["documents_kept"] == 80  # every chat record joins its two messages: 70 words
    assert (out / "manifest.json").exists()


def test_errors_are_one_line_and_exit_1(corpus, capsys):
    (corpus / "bad.jsonl").write_text('{"text": "fine"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--input", str(corpus / "bad.jsonl"), "--out", str(corpus / "out"), "--vocab-size", "300"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lmforge: error: ") and "bad.jsonl line 2: not valid JSON" in error
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--input", str(corpus / "news.txt"), "--out", str(corpus / "out")])
    assert exit_info.value.code == 1 and "--vocab-size" in capsys.readouterr().err


def test_quality_train_then_filter_with_it(corpus, capsys):
    rng = np.random.default_rng(1)
    (corpus / "good.txt").write_text(lines(rng, WORDS, 150, 25), encoding="utf-8")
    (corpus / "bad.txt").write_text(lines(rng, SPAM, 150, 25), encoding="utf-8")
    model = corpus / "quality.safetensors"
    main(["quality", "train", "--positive", str(corpus / "good.txt"), "--negative", str(corpus / "bad.txt"),
          "--out", str(model), "--read.unit", "line", "--dimensions", "4096"])
    table = capsys.readouterr().out
    assert "heldout" in table and "precision" in table
    (corpus / "mixed.txt").write_text(lines(rng, WORDS, 20, 60) + lines(rng, SPAM, 20, 60), encoding="utf-8")
    main(["prepare", "--input", str(corpus / "mixed.txt"), "--read.unit", "line", "--out", str(corpus / "filtered"),
          "--vocab-size", "300", "--quality-model", str(model), "--min-quality", "0.5", "--filters.min-stop-words", "0"])
    report = json.loads((corpus / "filtered" / "report.json").read_text())
    step = next(step for step in report["steps"] if step["step"] == "quality_model")
    assert step["dropped"]["min_quality"]["documents"] == 20 and step["documents_kept"] == 20


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    assert "lmforge prepare --input corpus/ --out data --vocab-size 8000" in capsys.readouterr().out
