import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lmforge.cli import main, run

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


def visible_lines(stderr: str) -> list[str]:
    """stderr as a terminal shows it: a progress bar redrawn with carriage returns leaves only its last state."""
    return [line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def assert_one_error_line(capsys, arguments, *fragments):
    assert run(["prepare", *arguments]) == 1
    stderr = capsys.readouterr().err
    lines = visible_lines(stderr)
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("lmforge: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_no_documents_at_all_is_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n\n", encoding="utf-8")
    assert_one_error_line(capsys, ["--input", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--vocab-size", "300"],
                          "no documents", "hold no text")


def test_filters_dropping_everything_is_one_error_line_with_what_dropped_it(tmp_path, capsys):
    (tmp_path / "good.txt").write_text(lines(np.random.default_rng(2), WORDS, 40, 60), encoding="utf-8")
    line = assert_one_error_line(capsys, ["--input", str(tmp_path / "good.txt"), "--read.unit", "line", "--out", str(tmp_path / "out"),
                                          "--vocab-size", "300", "--filters.min-words", "5000"], "no documents survived")
    assert "40 read" in line and "quality_rules dropped 40" in line and "min_words 40" in line


def gzip_variants(text: str) -> dict[str, bytes]:
    """A file that is not gzip at all, one cut short, and one with bytes overwritten in its middle."""
    import gzip

    compressed = gzip.compress(text.encode("utf-8"))
    middle = len(compressed) // 2
    return {
        "plain.txt.gz": text.encode("utf-8"),
        "truncated.txt.gz": compressed[:middle],
        "corrupt.txt.gz": compressed[:middle] + bytes(64) + compressed[middle + 64:],
    }


def test_a_damaged_gzip_file_is_one_error_line_naming_it(corpus, capsys):
    text = lines(np.random.default_rng(2), WORDS, 400, 60)
    for name, data in gzip_variants(text).items():
        (corpus / name).write_bytes(data)
        assert_one_error_line(capsys, ["--input", str(corpus / name), "--read.unit", "line", "--out", str(corpus / "out"),
                                       "--vocab-size", "300"], str(corpus / name), "--on-bad-line skip")
        assert not (corpus / "out" / "manifest.json").exists()


def test_on_bad_line_skip_leaves_a_damaged_gzip_file_out_with_a_warning(corpus, capsys):
    text = lines(np.random.default_rng(2), WORDS, 400, 60)
    (corpus / "good.txt").write_text(lines(np.random.default_rng(4), WORDS, 40, 60), encoding="utf-8")
    for name, data in gzip_variants(text).items():
        (corpus / name).write_bytes(data)
        out = corpus / f"out-{name}"
        assert run(["prepare", "--input", str(corpus / name), "--input", str(corpus / "good.txt"), "--read.unit", "line",
                    "--out", str(out), "--vocab-size", "300", "--on-bad-line", "skip"]) == 0
        printed = capsys.readouterr()
        report = json.loads((out / "report.json").read_text())
        assert "Traceback" not in printed.err and len(report["warnings"]) == 1 and str(corpus / name) in report["warnings"][0]
        assert f"warning: {report['warnings'][0]}" in printed.out
        read = next(step for step in report["steps"] if step["step"] == "read")
        assert read["dropped"]["unreadable_file"]["documents"] == 1
        assert read["documents_kept"] == 40  # good.txt's: a damaged file is left out whole


def test_ctrl_c_with_workers_stops_quickly_in_one_line_and_the_same_command_resumes(tmp_path):
    rng = np.random.default_rng(3)
    with open(tmp_path / "big.jsonl", "w", encoding="utf-8") as file:
        for _ in range(6000):
            file.write(json.dumps({"text": " ".join(rng.choice(WORDS, size=80))}) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmforge", "prepare", "--input", str(tmp_path / "big.jsonl"), "--out", str(out),
               "--vocab-size", "300", "--workers", "2", "--read.task_bytes", "100000"]
    # A terminal's Ctrl-C signals the whole foreground process group: the parent and its workers.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    markers = out / ".prepare" / "done"
    deadline = time.monotonic() + 60
    while not (markers.exists() and any(markers.glob("filter-*"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("prepare did not stop within 10 s of Ctrl-C")
    stderr = stderr.decode()
    assert process.returncode == 130 and "Traceback" not in stderr and visible_lines(stderr) == ["lmforge: interrupted"], stderr
    assert not (out / "manifest.json").exists() and any(markers.glob("filter-*"))
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()
    assert (out / "manifest.json").exists()
