"""Training checkpoints: a restored run continues bit for bit; old checkpoints are pruned; a
damaged newest one (a flipped byte, a missing file, a torn or step-less state.json, a crafted
pickle) is reported and loading falls back to the one before it."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.train.resume_state import list_checkpoints, load_latest_train_state, restore_train_state, save_train_state


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


def _train(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), torch.randn(16, 5)


def _step(model, optimizer, inputs) -> float:
    """One step whose loss depends on the random generator too (dropout-like noise)."""
    loss = (model(inputs + 0.1 * torch.randn_like(inputs)) - 1).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_save_then_restore_continues_exactly(tmp_path):
    """Weights, AdamW moments and the random generator come back: steps after a restore in a
    fresh model are the uninterrupted run's, bit for bit."""
    model, optimizer, inputs = _train()
    straight = [_step(model, optimizer, inputs) for _ in range(6)]

    model, optimizer, inputs = _train()
    first = [_step(model, optimizer, inputs) for _ in range(3)]
    train = tmp_path / "train"
    save_train_state(train, 3, model.state_dict(), optimizer.state_dict(), {"data": {"position": 48}, "tokens": 7}, keep_last=2)
    torch.manual_seed(999)  # what a new process would have
    fresh, fresh_optimizer, _ = _train(seed=1)
    resumed = load_latest_train_state(train)
    assert (resumed.step, resumed.state["data"], resumed.state["tokens"]) == (3, {"position": 48}, 7)
    assert not resumed.sharded and resumed.path == train / "step-000003"
    restore_train_state(resumed, fresh, fresh_optimizer, Topology(device=torch.device("cpu")))
    rest = [_step(fresh, fresh_optimizer, inputs) for _ in range(3)]
    assert first + rest == straight


def test_keep_last_prunes_the_oldest_and_listing_is_newest_first(tmp_path):
    train = tmp_path / "train"
    for step in (9, 10, 100, 1000):  # numeric order, not the names' order past six digits
        save_train_state(train, step, {"weight": torch.zeros(1)}, {"state": {}, "param_groups": []}, {}, keep_last=3)
    (train / ".step-002000.partial").mkdir()  # a save that never finished
    (train / "step-latest").mkdir()
    assert [path.name for path in list_checkpoints(train)] == ["step-001000", "step-000100", "step-000010"]
    assert not (train / "step-000009").exists()
    assert list_checkpoints(tmp_path / "nowhere") == [] and load_latest_train_state(tmp_path / "nowhere") is None


def _flip_last_byte(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))


@pytest.mark.parametrize("damage, reason", [
    (lambda step: _flip_last_byte(step / "optimizer.pt"), "optimizer.pt does not match its checksum"),
    (lambda step: (step / "rng.pt").unlink(), "rng.pt is missing"),
    (lambda step: (step / "state.json").write_text("{not json"), "unreadable state.json"),
    (lambda step: (step / "state.json").write_text(json.dumps(
        {**json.loads((step / "state.json").read_text()), "files": {}})), "incomplete file list"),
], ids=["flipped-byte", "missing-file", "torn-state", "files-dropped"])
def test_damaged_newest_falls_back_and_names_the_damage(tmp_path, capsys, damage, reason):
    train = tmp_path / "train"
    _save(train, 3)
    _save(train, 6)
    damage(train / "step-000006")
    resumed = load_latest_train_state(train)
    assert resumed.step == 3 and torch.equal(resumed.model["weight"], torch.full((2, 2), 3.0))
    assert f"step-000006 is damaged ({reason}" in capsys.readouterr().err


def test_crafted_pickle_is_refused_as_damage(tmp_path, capsys):
    """optimizer.pt is loaded with weights_only: a file that would run code when unpickled is
    damage, even with a matching checksum."""
    import hashlib
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled and ran",))

    train = tmp_path / "train"
    _save(train, 3)
    _save(train, 6)
    step = train / "step-000006"
    with open(step / "optimizer.pt", "wb") as handle:
        torch.save({"state": {}, "param_groups": [], "extra": Payload()}, handle, pickle_module=pickle)
    state = json.loads((step / "state.json").read_text())
    state["files"]["optimizer.pt"] = hashlib.sha256((step / "optimizer.pt").read_bytes()).hexdigest()
    (step / "state.json").write_text(json.dumps(state))
    assert load_latest_train_state(train).step == 3
    captured = capsys.readouterr()
    assert "unpickled and ran" not in captured.out and "step-000006 is damaged" in captured.err
