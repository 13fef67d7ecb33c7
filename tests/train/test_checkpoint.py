"""Training checkpoints: a state.json without an integer step is a damaged checkpoint, and loading
falls back to the one before it."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.train.checkpoint import load_latest_train_state, save_train_state


def _save(train, step: int) -> None:
    weights = {"weight": torch.full((2, 2), float(step))}
    save_train_state(train, step, weights, {"state": {}, "param_groups": []}, {"data": {}}, keep_last=3)


@pytest.mark.parametrize("step", [None, "6", 6.0, True])
def test_state_without_an_integer_step_falls_back(tmp_path, capsys, step):
    train = tmp_path / "train"
    _save(train, 3)
    _save(train, 6)
    state_file = train / "step-000006" / "state.json"
    state = json.loads(state_file.read_text())
    state.pop("step") if step is None else state.update(step=step)
    state_file.write_text(json.dumps(state))

    resumed = load_latest_train_state(train)
    assert resumed.step == 3 and resumed.model["weight"][0, 0] == 3
    assert "step-000006 is damaged (state.json has no integer step)" in capsys.readouterr().err


def test_a_lone_state_without_step_is_an_error(tmp_path):
    train = tmp_path / "train"
    _save(train, 3)
    state_file = train / "step-000003" / "state.json"
    state_file.write_text(json.dumps({key: value for key, value in json.loads(state_file.read_text()).items() if key != "step"}))
    with pytest.raises(LmforgeError, match="every checkpoint is damaged"):
        load_latest_train_state(train)
