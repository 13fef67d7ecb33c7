"""The bad-input sweep: every command, given a mistake a careful user could make, answers with
exit code 1 and one `lmforge: error:` line (no traceback), and changes no file but its declared
output. Each row is (command line, expected message fragment, declared output); `{w}` is a shared
directory holding a corpus, a prepared-data directory, a checkpoint and broken inputs."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.cli import run


def _corpus() -> str:
    """Paragraphs of plain English that pass prepare's filters (the standard library's docstrings)."""
    import inspect

    docs = [inspect.getdoc(member) or "" for module in (json, shutil, subprocess, hashlib, gzip, Path)
            for _, member in inspect.getmembers(module) if inspect.isfunction(member) or inspect.isclass(member)]
    return "\n\n".join(doc for doc in docs if len(doc) > 200)


@pytest.fixture(scope="module")
def world(tmp_path_factory, prepared_data) -> Path:
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer

    w = tmp_path_factory.mktemp("world")
    (w / "corpus").mkdir()
    (w / "corpus" / "docs.txt").write_text(_corpus(), encoding="utf-8")
    (w / "empty").mkdir()
    (w / "not-gzip.txt.gz").write_bytes(b"this is plain text, not gzip\n" * 20)
    (w / "truncated.txt.gz").write_bytes(gzip.compress(("some words here " * 2000).encode())[:-10])  # cut short
    import zstandard

    (w / "truncated.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(("more words " * 3000).encode())[:-8])
    (w / "bad.parquet").write_bytes(b"PAR1" + b"not really parquet" * 10 + b"PAR1")
    (w / "afile").write_text("an ordinary file where a directory is expected\n")
    data = Path(shutil.copytree(prepared_data, w / "data"))
    vocab = json.loads((data / "manifest.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=vocab, context_length=32)
    save_checkpoint(Transformer(config), w / "run", tokenizer=data / "tokenizer.json")
    (w / "run" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, "loss": 5.0 / step, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": 1e3, "mfu": 0.1}) + "\n"
        for step in (1, 2, 3)))
    assert run(["convert", "to-gguf", str(w / "run"), str(w / "run.gguf")]) == 0
    (w / "cut.gguf").write_bytes((w / "run.gguf").read_bytes()[:5000])
    for name, override in {"alibi": {"position": "alibi"}, "batchnorm": {"norm": "batchnorm"}, "relu": {"mlp": "relu"},
                           "flash": {"attention": "flash"}, "dropout": {"dropout": 1.5}, "head_dim": {"head_dim": -4}}.items():
        (w / f"model-{name}.json").write_text(json.dumps({"preset": "tiny-llama", **override}))
    _finetuning_inputs(w, config, data / "tokenizer.json")
    return w


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _finetuning_inputs(w: Path, config, tokenizer: Path) -> None:
    """Fine-tuning examples (good ones, and files with one mistake each), checkpoints without a
    tokenizer or that prefix tuning refuses (MLA, sliding windows), and PEFT directories that do not fit w/run."""
    from lmforge.interop.peft import export_lora
    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer
    from lmforge.peft import LoraConfig, apply_peft

    good = [{"instruction": f"Name the number after {n}.", "input": "", "output": f"It is {n + 1}."} for n in range(20)]
    _jsonl(w / "ft.jsonl", good)
    _jsonl(w / "ft-missing-field.jsonl", [good[0], {"instruction": "Say hello.", "input": ""}, *good[1:]])
    _jsonl(w / "ft-unknown-role.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep"}]}])
    _jsonl(w / "ft-ends-with-user.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                                         {"role": "user", "content": "And then?"}]}])
    _jsonl(w / "one-label.jsonl", [{"text": f"text number {n}", "label": "only"} for n in range(20)])
    pairs = [{"prompt": f"Count from {n}.", "chosen": f"{n + 1}", "rejected": f"{n - 1}"} for n in range(20)]
    _jsonl(w / "pairs-missing-rejected.jsonl", [*pairs[:2], {"prompt": "Hi", "chosen": "Hello"}])
    _jsonl(w / "pairs-identical.jsonl", [{"prompt": f"Say {n}.", "chosen": "same", "rejected": "same"} for n in range(4)])
    _jsonl(w / "pairs-chat-no-user.jsonl", [{"prompt": [{"role": "assistant", "content": "Hi"}], "chosen": "a", "rejected": "b"}])
    _jsonl(w / "prompts.jsonl", [{"prompt": f"Count from {n}."} for n in range(8)])
    for name, preset in (("mla", "tiny-mla-moe"), ("gemma", "tiny-gemma")):
        model_config = dataclasses.replace(preset_config(preset), vocab_size=config.vocab_size, context_length=32)
        save_checkpoint(Transformer(model_config), w / name, tokenizer=tokenizer)
    save_checkpoint(Transformer(config), w / "no-tokenizer")
    other = Transformer(dataclasses.replace(config, d_model=2 * config.d_model))  # another model's LoRA: other shapes
    apply_peft(other, "lora", LoraConfig())
    (w / "peft-other-model").mkdir()
    export_lora(other, other.config, LoraConfig(), w / "peft-other-model")
    (w / "peft-no-config").mkdir()
    shutil.copyfile(w / "peft-other-model" / "adapter_model.safetensors", w / "peft-no-config" / "adapter_model.safetensors")


def _snapshot(root: Path, skip: Path | None) -> dict[str, str]:
    """Every file under `root` (but `skip`) with a digest of its bytes and mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_file():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(path.stat().st_mode)
        else:
            found[str(path.relative_to(root))] = "dir"
    return found


PRETRAIN = "pretrain --data {w}/data --out {w}/out --train.steps 2"
PREPARE = "prepare --input {w}/corpus --out {w}/out --vocab-size 300"
FINETUNE = "finetune {w}/run --data {w}/ft.jsonl --out {w}/out --train.steps 1"

# (command line, message fragment, declared output). A fragment names the option or file at fault.
CASES = {
    # Every numeric option of a recipe section has a declared range, checked before any work.
    "dedup-ngram-0": (PREPARE + " --dedup.ngram 0", "--dedup.ngram must be ≥ 1"),
    "dedup-rows-0": (PREPARE + " --dedup.rows 0", "--dedup.rows must be ≥ 1"),
    "dedup-bands-0": (PREPARE + " --dedup.bands 0", "--dedup.bands must be ≥ 1"),
    "dedup-ngram-negative": (PREPARE + " --dedup.ngram -3", "--dedup.ngram must be ≥ 1"),
    "shard-tokens-0": (PREPARE + " --shard-tokens 0", "--shard-tokens must be ≥ 1"),
    "vocab-size-10": ("prepare --input {w}/corpus --out {w}/out --vocab-size 10", "vocab size 10 is too small"),
    "encoding-bogus": (PREPARE + " --read.encoding bogus", "--read.encoding 'bogus'"),
    "filter-fraction": (PREPARE + " --filters.max_ad_lines 2", "--filters.max_ad_lines must be in [0, 1]"),
    "ngram-share-key": (PREPARE + " --filters.max_top_ngram_chars '{{0: 0.2}}'", "--filters.max_top_ngram_chars"),
    "val-fraction-1": (PREPARE + " --val-fraction 1", "--val-fraction must be in [0, 1)"),
    "min-quality": (PREPARE + " --min-quality 3", "--min-quality must be in [0, 1]"),
    "mix-weight": (PREPARE + " --mix.weights '{{docs: -1}}'", "--mix.weights[docs] must be ≥ 0"),
    "prepare-out-is-file": ("prepare --input {w}/corpus --out {w}/afile --vocab-size 300", "afile"),
    # Nothing left to tokenize, and damaged compressed inputs, for every command that reads them.
    "prepare-all-filtered": (PREPARE + " --filters.min-words 100000", "no documents survived the filters"),
    "prepare-not-gzip": ("prepare --input {w}/not-gzip.txt.gz --out {w}/out --vocab-size 300", "not-gzip.txt.gz: cannot read it"),
    "prepare-truncated": ("prepare --input {w}/truncated.txt.gz --out {w}/out --vocab-size 300", "truncated.txt.gz: cannot read it"),
    "prepare-truncated-skip": ("prepare --input {w}/truncated.txt.gz --out {w}/out --vocab-size 300 --on-bad-line skip",
                               "read dropped 1 (unreadable_file 1)"),
    "tokenizer-not-gzip": ("tokenizer train --input {w}/not-gzip.txt.gz --vocab-size 300 --out {w}/out", "not-gzip.txt.gz: cannot read it"),
    "prepare-truncated-zst": ("prepare --input {w}/truncated.txt.zst --out {w}/out --vocab-size 300",
                              "truncated.txt.zst: cannot read it (the file ends inside a zstd frame)"),
    "prepare-bad-parquet": ("prepare --input {w}/bad.parquet --out {w}/out --vocab-size 300", "bad.parquet: not a readable Parquet file"),
    "bm25-truncated": ("bm25 index {w}/truncated.txt.gz --out {w}/out", "truncated.txt.gz: cannot read it"),
    # Model-config choices and ranges (from a file: the error names it).
    **{f"model-{name}": (f"model info --config {{w}}/model-{name}.json", fragment) for name, fragment in {
        "alibi": "'position' must be one of learned, rope; got 'alibi'",
        "batchnorm": "'norm' must be one of layernorm, rmsnorm",
        "relu": "'mlp' must be one of gelu, swiglu",
        "flash": "'attention' must be one of mha, mla",
        "dropout": "'dropout' must be in [0, 1), got 1.5",
        "head_dim": "'head_dim' must be ≥ 1, got -4",
    }.items()},
    "pretrain-model-alibi": (PRETRAIN + " --model {w}/model-alibi.json", "model-alibi.json"),
    "train-beta1": (PRETRAIN + " --model tiny-llama --train.beta1 2", "--train.beta1 must be in [0, 1)"),
    "train-eval-batches-0": (PRETRAIN + " --model tiny-llama --train.eval_batches 0", "--train.eval_batches must be ≥ 1"),
    "train-context-0": (PRETRAIN + " --model tiny-llama --train.context_length 0", "--train.context_length must be ≥ 1"),
    "parallel-tp-0": (PRETRAIN + " --model tiny-llama --parallel.tp 0", "--parallel.tp must be ≥ 1"),
    "pretrain-out-is-file": ("pretrain --model tiny-llama --data {w}/data --out {w}/afile --train.steps 2", "afile"),
    # Argument errors: one line naming the option, and for a typo the closest valid one.
    "typo-option": (PRETRAIN + " --model tiny-llama --train.stepz 3", "unknown option --train.stepz; did you mean --train.steps?"),
    "typo-top-option": ("prepare --inptu {w}/corpus --out {w}/out", "unknown option --inptu; did you mean --input?"),
    "wrong-type": (PRETRAIN + " --model tiny-llama --train.steps many", "--train.steps expects an integer, got 'many'"),
    "wrong-choice": (PRETRAIN + " --model tiny-llama --train.precision fp8", "--train.precision expects one of auto, fp32"),
    "missing-required": ("pretrain --data {w}/data", "lmforge pretrain needs --model and --out"),
    "missing-positional": ("generate --prompt hi", "lmforge generate needs CHECKPOINT"),
    "typo-command": ("tokenizer trian", "unknown command 'trian' for lmforge tokenizer; did you mean 'train'?"),
    "no-command": ("convert", "lmforge convert needs a command"),
    "extra-argument": ("eval ppl {w}/run {w}/run --data {w}/corpus/docs.txt", "unexpected argument"),
    # Operating-system errors: one line naming the path and the cause.
    "tokenizer-out-is-file": ("tokenizer train --input {w}/corpus --vocab-size 300 --out {w}/afile", "afile"),
    "plot-out-under-file": ("plot {w}/run --out {w}/afile/loss.png", "afile"),
    "bm25-out-is-file": ("bm25 index {w}/corpus --out {w}/afile", "afile"),
    "convert-out-is-file": ("convert to-hf {w}/run {w}/afile", "afile"),
    "tokenizer-vocab-10": ("tokenizer train --input {w}/corpus --vocab-size 10 --out {w}/out", "vocab size 10 is too small"),
    # GGUF in and out.
    "from-gguf-not-gguf": ("convert from-gguf {w}/afile {w}/out", "afile: not a GGUF file"),
    "from-gguf-truncated": ("convert from-gguf {w}/cut.gguf {w}/out", "cut.gguf: truncated or damaged GGUF file"),
    "from-gguf-missing": ("convert from-gguf {w}/none.gguf {w}/out", "none.gguf: no such file"),
    "from-gguf-into-source": ("convert from-gguf {w}/run.gguf {w}/run.gguf", "run.gguf"),
    "from-gguf-dtype": ("convert from-gguf {w}/run.gguf {w}/out --dtype fp8", "--dtype expects one of fp32, bf16"),
    "to-gguf-not-checkpoint": ("convert to-gguf {w}/corpus {w}/out", "corpus: not a checkpoint directory"),
    "to-gguf-onto-file": ("convert to-gguf {w}/run {w}/afile --overwrite", "afile is not a GGUF file"),
    "to-gguf-exists": ("convert to-gguf {w}/run {w}/run.gguf", "run.gguf already exists"),
    "to-gguf-dtype": ("convert to-gguf {w}/run {w}/out --dtype q4_0", "--dtype expects one of f32, f16, bf16, q8_0"),
    # Fine-tuning: its checkpoint and examples, options that do not go together, methods a model cannot take.
    "finetune-no-tokenizer": ("finetune {w}/no-tokenizer --data {w}/ft.jsonl --out {w}/out", "no-tokenizer: no tokenizer.json"),
    "finetune-row-missing-field": ("finetune {w}/run --data {w}/ft-missing-field.jsonl --out {w}/out",
                                   "ft-missing-field.jsonl:2: field 'output' is missing"),
    "finetune-unknown-role": ("finetune {w}/run --data {w}/ft-unknown-role.jsonl --out {w}/out",
                              "ft-unknown-role.jsonl:1: messages[1].role is 'robot', not a known role"),
    "finetune-ends-with-user": ("finetune {w}/run --data {w}/ft-ends-with-user.jsonl --out {w}/out",
                                "ft-ends-with-user.jsonl:1: field 'messages': the conversation ends with a user message"),
    "finetune-one-label": ("finetune {w}/run --data {w}/one-label.jsonl --out {w}/out --task classify",
                           "classification needs at least two labels, found ['only']"),
    "finetune-tp": (FINETUNE + " --parallel.tp 2", "--parallel.tp and --parallel.pp must be 1"),
    "finetune-trainable-sft": (FINETUNE + " --trainable head", "--trainable is for classifiers and reward models"),
    "finetune-out-in-checkpoint": ("finetune {w}/run --data {w}/ft.jsonl --out {w}/run/sft", "is inside the starting checkpoint"),
    "finetune-prefix-mla": ("finetune {w}/mla --data {w}/ft.jsonl --out {w}/out --method prefix", "this model uses MLA attention"),
    "finetune-prefix-sliding-window": ("finetune {w}/gemma --data {w}/ft.jsonl --out {w}/out --method prefix",
                                       "use sliding-window attention"),
    "finetune-lora-targets": (FINETUNE + " --method lora --lora.targets nonexistent_proj",
                              "--lora.targets: 'nonexistent_proj' matches no linear layer"),
    "finetune-lora-r-0": (FINETUNE + " --method lora --lora.r 0", "--lora.r must be ≥ 1"),
    "from-peft-other-model": ("convert from-peft {w}/peft-other-model {w}/out --base {w}/run", "lora_A.weight has shape (8, 128), the lora config implies (8, 64)"),
    "from-peft-no-config": ("convert from-peft {w}/peft-no-config {w}/out --base {w}/run", "adapter_config.json: file not found"),
    # Preference training: rows, pairs that carry no preference, a reward model that is not one.
    "align-pair-missing-field": ("align dpo {w}/run --data {w}/pairs-missing-rejected.jsonl --out {w}/out",
                                 "pairs-missing-rejected.jsonl:3: not a preference pair (fields: prompt, chosen)"),
    "align-pairs-all-identical": ("align reward {w}/run --data {w}/pairs-identical.jsonl --out {w}/out",
                                  "no training pair is left (after dropping 4"),
    "align-chat-prompt-without-user": ("align dpo {w}/run --data {w}/pairs-chat-no-user.jsonl --out {w}/out",
                                       "field 'prompt' must end with a user message"),
    "align-dpo-beta-0": ("align dpo {w}/run --data {w}/ft.jsonl --out {w}/out --beta 0", "--beta must be positive"),
    "align-ppo-not-reward-model": ("align ppo {w}/run --reward-model {w}/run --prompts {w}/prompts.jsonl --out {w}/out "
                                   "--rollout-batch 4 --max-new-tokens 8", "not a reward model (no reward.json)"),
    "align-ppo-rollout-batch": ("align ppo {w}/run --reward-model {w}/run --prompts {w}/prompts.jsonl --out {w}/out "
                                "--rollout-batch 6 --train.micro_batch_size 4 --max-new-tokens 8", "--rollout-batch 6 must be a multiple"),
    "align-ppo-few-prompts": ("align ppo {w}/run --reward-model {w}/run --prompts {w}/prompts.jsonl --out {w}/out "
                              "--max-new-tokens 8",
                              "8 prompt(s) are fewer than --rollout-batch 16"),
    "align-reward-score-not-reward": ("align reward-score {w}/run --data {w}/ft.jsonl", "run: not a reward model"),
    "classify-not-classifier": ("classify {w}/run --text hello", "run: not a classification fine-tune (no classifier.json)"),
    "chat-no-tokenizer": ("chat {w}/no-tokenizer", "no-tokenizer: no tokenizer.json"),
    "chat-not-an-index": ("chat {w}/run --index {w}/empty", "empty is not a BM25 index"),
    "chat-no-checkpoint": ("chat {w}/nothing-here", "nothing-here: no such checkpoint directory"),
    "serve-bad-port": ("serve {w}/run --port 70000", "--port must be"),
    "serve-bad-host": ("serve {w}/run --host no.such.host.invalid --port 8765", "cannot listen there"),
    "serve-not-an-index": ("serve {w}/run --index {w}/empty --port 8765", "empty is not a BM25 index"),
    "serve-max-batch-0": ("serve {w}/run --max-batch 0", "--max-batch must be"),
    "eval-rag-not-an-index": ("eval rag {w}/empty --checkpoint {w}/run", "empty is not a BM25 index"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, world, tmp_path, monkeypatch, capsys):
    import shlex

    command, fragment = CASES[name]
    argv = shlex.split(command.format(w=world))
    declared = world / "out"
    before = _snapshot(world, declared)
    monkeypatch.chdir(tmp_path)  # anything written to the working directory is a stray file
    code = run(argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("lmforge: error:")]
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr
    assert fragment in errors[0], errors[0]
    assert _snapshot(world, declared) == before
    assert not any(tmp_path.iterdir())
    shutil.rmtree(declared, ignore_errors=True)


def test_on_bad_row_skip_trains_on_the_other_rows(world, tmp_path, capsys):
    argv = ["finetune", str(world / "run"), "--data", str(world / "ft-missing-field.jsonl"), "--out", str(tmp_path / "sft"),
            "--on-bad-row", "skip", "--train.steps", "1", "--train.micro_batch_size", "2", "--train.eval_every", "0",
            "--train.peak_flops", "1e12"]
    assert run(argv) == 0
    stderr = capsys.readouterr().err
    assert "skipped 1 bad row" in stderr and f"(first: {world / 'ft-missing-field.jsonl'}:2: field 'output' is missing" in stderr
    assert "lmforge: error:" not in stderr and (tmp_path / "sft" / "model.safetensors").is_file()


def _in_small_mount(tmp_path: Path, options: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `lmforge ARGV` in a private mount namespace where tmp_path/mnt is a tiny tmpfs
    (`options`: `size=16k` for a full disk, `ro` for a read-only one)."""
    mount = tmp_path / "mnt"
    mount.mkdir(exist_ok=True)
    script = f"mount -t tmpfs -o {options} tmpfs {mount} && exec {sys.executable} -m lmforge \"$@\""
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True, timeout=300)


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not shutil.which("unshare") or not _can_mount(), reason="needs unshare and mount (root) to make a full or read-only disk")
# numpy's short writes carry no errno: the CLI then says "is the disk full?".
@pytest.mark.parametrize("options, causes", [("size=16k", ("No space left on device", "is the disk full?")),
                                             ("ro,size=16k", ("Read-only file system",))])
@pytest.mark.parametrize("command", [
    "prepare --input {w}/corpus --out {m}/data --vocab-size 300",
    "pretrain --model tiny-llama --data {w}/data --out {m}/run --train.steps 1 --train.eval_every 0",
    "tokenizer train --input {w}/corpus --vocab-size 300 --out {m}/tok",
    "convert to-hf {w}/run {m}/hf",
    "plot {w}/run --out {m}/plots",
    "bm25 index {w}/corpus --out {m}/index",
])
def test_full_or_read_only_disk_is_one_line(command, options, causes, world, tmp_path):
    import shlex

    argv = shlex.split(command.format(w=world, m=tmp_path / "mnt"))
    before = _snapshot(world, None)
    done = _in_small_mount(tmp_path, options, argv)
    errors = [line for line in done.stderr.splitlines() if line.startswith("lmforge: error:")]
    if options.startswith("size") and done.returncode == 0:
        pytest.skip("the output fitted in the small disk")  # tiny outputs (a tokenizer) may fit
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and any(cause in errors[0] for cause in causes), done.stderr
    assert str(tmp_path / "mnt") in errors[0] and done.stderr.rstrip().endswith(errors[0])
    assert _snapshot(world, None) == before
