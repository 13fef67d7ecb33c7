"""`lmforge quickstart` runs end to end on its built-in corpus, and a second run continues it."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main


def test_quickstart_end_to_end_and_rerun(tmp_path, capsys):
    out = tmp_path / "qs"
    main(["quickstart", "--out", str(out), "--steps", "4"])
    printed = capsys.readouterr()
    assert "validation perplexity:" in printed.out and "'中国' →" in printed.out
    for name in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/loss.png",
                 "model/lr.png", "data/report.json", "data/manifest.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "data" / "report.json").read_text())
    assert report  # the audit trail of what each step kept and dropped
    main(["quickstart", "--out", str(out), "--steps", "4"])
    assert "(resuming)" in capsys.readouterr().err


def test_quickstart_rejects_both_budgets(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--out", str(tmp_path), "--steps", "4", "--minutes", "1"])
    assert exit_info.value.code == 1
    assert "--minutes or --steps, not both" in capsys.readouterr().err
