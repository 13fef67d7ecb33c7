import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.commands.prepare import prepare
from lmforge.data.recipe import DedupConfig, FilterConfig, MixConfig, ReadConfig
from lmforge.data.shards import read_manifest
from lmforge.data.verify import verify_shards
from lmforge.errors import LmforgeError
from lmforge.tokenizer import load_tokenizer

WORDS = "the of and to with that have river valley farmers settled banks seasonal floods rich soil market towns temples grain cloth cities scholars stars calendar region sites visitors world".split()
HAN = "人民政府继续坚持发展经济建设社会文化教育科学技术进步的了是在和有我们国家"


def make_corpus(directory: Path, documents: int = 120) -> list[str]:
    """An English JSONL source and a Chinese paragraph-per-block text source, with duplicates,
    a near duplicate and a too-short document among them."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    english = [" ".join(rng.choice(WORDS, size=70)) for _ in range(documents)]
    english += [english[0], english[1].upper(), "too short", english[2].replace(english[2].split()[30], "different", 1)]
    with open(directory / "en.jsonl", "w", encoding="utf-8") as file:
        for index, text in enumerate(english):
            file.write(json.dumps({"id": f"e{index}", "text": text}) + "\n")
    chinese = ["".join(rng.choice(list(HAN), size=90)) for _ in range(documents // 2)]
    (directory / "zh.txt").write_text("\n\n".join(chinese + [chinese[0]]) + "\n", encoding="utf-8")
    return [f"en={directory / 'en.jsonl'}", f"zh={directory / 'zh.txt'}"]


def run(inputs, out, **options):
    options.setdefault("vocab_size", 300)
    options.setdefault("val_fraction", 0.1)
    options.setdefault("read", ReadConfig(task_bytes=4000))
    return prepare(input=inputs, out=str(out), **options)


def output_bytes(directory: Path) -> dict[str, bytes]:
    names = [path for path in directory.rglob("*") if path.is_file() and path.name != "report.json"]
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(names)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    inputs = make_corpus(root / "corpus")
    report = run(inputs, root / "out")
    return inputs, root / "out", report


def test_writes_the_prepared_data_directory(prepared):
    _, out, report = prepared
    manifest = read_manifest(out)
    assert verify_shards(out) == len(manifest["splits"]["train"]["shards"]) + len(manifest["splits"]["val"]["shards"])
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] <= 300
    tokenizer = load_tokenizer(out / "tokenizer.json")
    train = np.fromfile(out / "train-00000.bin", dtype=np.uint16)
    assert train[-1] == tokenizer.eos_id
    assert int((train == tokenizer.eos_id).sum()) == manifest["splits"]["train"]["documents"]
    assert not (out / ".prepare").exists()
    steps = {step["step"]: step for step in report["steps"]}
    assert steps["read"]["documents_in"] == 124 + 61
    assert steps["quality_rules"]["dropped"]["min_words"]["documents"] == 1
    assert steps["dedup"]["dropped"]["exact_duplicate"]["documents"] == 3
    assert steps["dedup"]["dropped"]["near_duplicate"]["documents"] == 1
    documents = manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"]
    assert documents == steps["tokenize"]["documents_in"] == 124 + 61 - 5
    assert json.loads((out / "report.json").read_text()) == report


def test_every_dropped_document_is_in_the_exclusion_files(prepared):
    _, out, report = prepared
    for step in report["steps"]:
        if step["documents_dropped"]:
            with gzip.open(out / "excluded" / f"{step['step']}.jsonl.gz", "rt", encoding="utf-8") as file:
                records = [json.loads(line) for line in file]
            assert len(records) == step["documents_dropped"]
            assert {record["reason"] for record in records} == set(step["dropped"])
    with gzip.open(out / "excluded" / "dedup.jsonl.gz", "rt", encoding="utf-8") as file:
        assert {json.loads(line)["id"] for line in file} == {"en/en.jsonl:121", "en/en.jsonl:122", "en/en.jsonl:124", "zh/zh.txt:121"}


def test_output_does_not_depend_on_workers(prepared, tmp_path):
    inputs, out, _ = prepared
    run(inputs, tmp_path / "parallel", workers=2)
    assert output_bytes(tmp_path / "parallel") == output_bytes(out)


def test_rerun_is_a_no_op_and_another_recipe_needs_overwrite(prepared, tmp_path):
    inputs, out, report = prepared
    started = time.perf_counter()
    assert run(inputs, out) == report
    assert time.perf_counter() - started < 2
    with pytest.raises(LmforgeError, match="--overwrite"):
        run(inputs, out, val_fraction=0.2)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    replaced = run(inputs, copy, val_fraction=0.2, overwrite=True)
    assert replaced["recipe"]["tokenize"]["val_fraction"] == 0.2
    assert read_manifest(copy)["splits"]["val"]["documents"] > read_manifest(out)["splits"]["val"]["documents"]


def test_killed_run_resumes_to_the_same_output(prepared, tmp_path):
    inputs, reference, _ = prepared
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "lmforge", "prepare", "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.1",
               "--read.task_bytes", "4000", *[argument for spec in inputs for argument in ("--input", spec)]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = out / ".prepare" / "done"
    deadline = time.monotonic() + 60
    while not (markers.exists() and len(list(markers.glob("filter-*"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    finished = {path.name for path in markers.glob("*")}
    assert finished
    run(inputs, out)
    assert output_bytes(out) == output_bytes(reference)


def test_malformed_line_stops_with_file_and_line_and_leaves_nothing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"text": " ".join(WORDS)})] * 3 + ['{"text": "unterminated'] + [json.dumps({"text": "fine"})]
    (corpus / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(LmforgeError, match=r"bad\.jsonl line 4: not valid JSON.*--on-bad-line skip"):
        run([str(corpus)], out)
    assert not out.exists() or not [path for path in out.rglob("*") if path.is_file()]
    report = run([str(corpus)], out, on_bad_line="skip", filters=FilterConfig(enabled=False), dedup=DedupConfig(exact=False, near=False))
    read = next(step for step in report["steps"] if step["step"] == "read")
    assert read["dropped"] == {"bad_json": {"documents": 1, "characters": len('{"text": "unterminated')}}


def test_mixture_reports_achieved_next_to_asked(tmp_path):
    inputs = make_corpus(tmp_path / "corpus")
    report = run(inputs, tmp_path / "out", mix=MixConfig(epochs={"en": 2.0, "zh": 0.5}), val_fraction=0.0)
    mixture = report["mixture"]
    assert mixture["en"]["epochs"] == 2.0 and mixture["zh"]["epochs"] == 0.5
    for entry in mixture.values():
        assert abs(entry["achieved_share_characters"] - entry["asked_share"]) < 0.1
    tokenize = next(step for step in report["steps"] if step["step"] == "tokenize")
    mix = next(step for step in report["steps"] if step["step"] == "mix")
    assert tokenize["counters"]["train_documents"] == mix["counters"]["copies"]


def test_ranks_share_the_work(prepared, tmp_path):
    inputs, reference, _ = prepared
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "lmforge", "prepare", "--out", str(out), "--vocab-size", "300", "--val-fraction", "0.1",
               "--read.task_bytes", "4000", *[argument for spec in inputs for argument in ("--input", spec)]]
    processes = [
        subprocess.Popen(command, env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for rank in range(2)
    ]
    for process in processes:
        _, error = process.communicate(timeout=120)
        assert process.returncode == 0, error.decode()
    assert output_bytes(out) == output_bytes(reference)


def test_rank_and_world_size_from_torchrun_or_slurm(monkeypatch):
    from lmforge.data.executor import distributed_rank

    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_rank() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed_rank() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(LmforgeError, match="RANK=4 must be between 0 and WORLD_SIZE-1=3"):
        distributed_rank()
