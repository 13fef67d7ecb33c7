"""`lmforge quickstart` runs end to end on its built-in corpus, and a second run continues it."""

from __future__ import annotations

import json
import re

import pytest

from lmforge.cli import main


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_quickstart_end_to_end_and_rerun(tmp_path, capsys):
    """Raw text → pretrained model → chat model that answers in both languages; a rerun resumes
    every stage instead of starting over."""
    out = tmp_path / "qs"
    main(["quickstart", "--out", str(out), "--steps", "4"])
    printed = capsys.readouterr()
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/loss.png",
                 "model/lr.png", "data/report.json", "data/manifest.json", "chat/config.json", "chat/model.safetensors",
                 "chat/generation.json", "chat-data/dialogues.jsonl"):
        assert (out / name).is_file(), name
    assert json.loads((out / "data" / "report.json").read_text())  # the audit trail of what each step kept and dropped
    # The pretraining and the chat stage each trained their steps and evaluated before and after.
    for run, steps in (("model", 4), ("chat", 4)):
        metrics = _metrics(out / run)
        assert max(line["step"] for line in metrics if "loss" in line) == steps
        assert [line["step"] for line in metrics if "val_loss" in line][0] == 0
    generation = json.loads((out / "chat" / "generation.json").read_text())
    assert "<|im_start|>" in generation["chat_template"]  # ChatML: a model pretrained here has no template of its own
    dialogues = (out / "chat-data" / "dialogues.jsonl").read_text(encoding="utf-8").splitlines()
    assert any("你好" in line for line in dialogues) and any('"assistant"' in line for line in dialogues)
    text = printed.out
    assert "validation perplexity:" in text and "chat validation perplexity" in text and "'中国' →" in text
    accuracies = re.search(r"chinese_review_sentiment \(zero-shot, (\d+) examples.*?\): ([\d.]+)% pretrained, ([\d.]+)%", text)
    assert accuracies and int(accuracies[1]) == 200 and all(0 <= float(value) <= 100 for value in accuracies.groups()[1:])
    for language in ("English", "Chinese"):
        assert text.count(f"[{language}] user:") == 2 and text.count(f"[{language}] model:") == 2
    assert f"lmforge chat {out / 'chat'}" in text and f"lmforge serve {out / 'chat'}" in text

    chat_weights = (out / "chat" / "model.safetensors").read_bytes()
    main(["quickstart", "--out", str(out), "--steps", "4"])
    rerun = capsys.readouterr()
    assert "(resuming)" in rerun.err and rerun.err.count("(resuming)") >= 2  # pretraining and chat
    assert (out / "chat" / "model.safetensors").read_bytes() == chat_weights  # finished stages are not redone
    assert max(line["step"] for line in _metrics(out / "chat") if "loss" in line) == 4


def test_quickstart_rejects_both_budgets(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--out", str(tmp_path), "--steps", "4", "--minutes", "1"])
    assert exit_info.value.code == 1
    assert "--minutes or --steps, not both" in capsys.readouterr().err
