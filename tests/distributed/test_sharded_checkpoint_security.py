"""Reading a sharded checkpoint runs no code from it: a step directory whose `.metadata`, or whose
non-tensor value (an optimizer's lr), is a pickle that would create a file is refused as damaged,
and the run resumes from the genuine checkpoint before it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from lmforge.distributed.mesh import Topology
from lmforge.distributed.sharded_checkpoint import OPTIONS, load_sharded
from lmforge.errors import LmforgeError
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.train.resume_state import load_latest_train_state, restore_train_state, save_sharded_train_state

pytestmark = [pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
              pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")]
CPU = Topology(device=torch.device("cpu"))


class _Touch:
    """Unpickling it creates `path`: the stand-in for a shell command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def _trained(seed: int) -> tuple[Transformer, torch.optim.Optimizer]:
    """A tiny model and its AdamW after one step, so the optimizer has state to save."""
    torch.manual_seed(seed)
    model = Transformer(preset_config("tiny-llama"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 100, (1, 8))).float().mean().backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture
def genuine(tmp_path) -> tuple[Path, Transformer, torch.optim.Optimizer]:
    """A real one-process DCP checkpoint at step 2 under tmp_path/train."""
    model, optimizer = _trained(seed=0)
    save_sharded_train_state(tmp_path / "train", 2, model, optimizer, {"data": {}}, keep_last=3, topology=CPU)
    return tmp_path / "train", model, optimizer


def _forge(train: Path, craft) -> Path:
    """step-000004: a copy of step-000002 changed by `craft(directory)`, with a state.json that
    matches it (step raised, the sizes of the files as they now are), as an attacker would write."""
    forged = train / "step-000004"
    shutil.copytree(train / "step-000002", forged)
    craft(forged)
    state = json.loads((forged / "state.json").read_text())
    files = {path.name: path.stat().st_size for path in forged.iterdir() if path.name != "state.json"}
    (forged / "state.json").write_text(json.dumps({**state, "step": 4, "files": files}))
    return forged


def _evil_metadata(marker: Path):
    def craft(directory: Path) -> None:
        (directory / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    return craft


def _evil_learning_rate(marker: Path):
    """Real shards and metadata, but one BYTE_IO value (a learning rate) is the crafted pickle."""
    def craft(directory: Path) -> None:
        model_state, optimizer_state = get_state_dict(*_trained(seed=1), options=OPTIONS)
        key = next(key for key in optimizer_state if key.startswith("param_groups.") and key.endswith(".lr"))
        optimizer_state[key] = _Touch(marker)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))
    return craft


def _shard_outside(marker: Path):
    """Genuine classes, but a shard named outside the step directory."""
    def craft(directory: Path) -> None:
        metadata = pickle.loads((directory / ".metadata").read_bytes())  # the genuine file, trusted here
        for info in metadata.storage_data.values():
            info.relative_path = "../" + info.relative_path
        (directory / ".metadata").write_bytes(pickle.dumps(metadata))
    return craft


@pytest.mark.parametrize("craft, refused", [
    (_evil_metadata, r"\.metadata: refused to unpickle pathlib\.Path\.touch,"),
    (_evil_learning_rate, r"\.distcp: refused to unpickle optimizer\.param_groups\..*\.lr"),
    (_shard_outside, r"\.metadata: names a shard outside its directory"),
])
def test_crafted_checkpoint_is_refused_and_resume_falls_back(genuine, tmp_path, capsys, craft, refused):
    train, saved_model, saved_optimizer = genuine
    marker = tmp_path / "MARKER"
    forged = _forge(train, craft(marker))
    model, optimizer = _trained(seed=2)

    resumed = load_latest_train_state(train)
    restore_train_state(resumed, model, optimizer, CPU)
    assert not marker.exists()
    assert resumed.step == 2 and "step-000004 is damaged" in capsys.readouterr().err
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved_model.state_dict().values()))
    assert str(optimizer.state_dict()) == str(saved_optimizer.state_dict())

    with pytest.raises(LmforgeError, match=refused):  # the one-line error, when read directly
        load_sharded(forged, model, optimizer)
    assert not marker.exists()


def test_every_checkpoint_refused_is_an_error(genuine, tmp_path):
    train, _, _ = genuine
    _forge(train, _evil_metadata(tmp_path / "MARKER"))
    shutil.rmtree(train / "step-000002")
    with pytest.raises(LmforgeError, match="every checkpoint is damaged"):
        load_latest_train_state(train)
    assert not (tmp_path / "MARKER").exists()
