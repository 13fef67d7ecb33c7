"""The executor: each rank runs every world_size-th task, finished tasks are skipped on a rerun,
a failed task leaves no marker, rank 0 alone runs a one-off step, and a worker that dies is an
error rather than a hang."""

import os
from pathlib import Path

import pytest

from lmforge.data.executor import Executor, distributed_rank
from lmforge.errors import LmforgeError


def _record(log: Path, name: str) -> None:
    """A task: append its name and process id to `log` (module-level, so a worker process can run it)."""
    with open(log, "a") as file:
        file.write(f"{name} {os.getpid()}\n")


def _fail_on(log: Path, name: str, failing: str) -> None:
    if name == failing:
        raise RuntimeError(f"task {name} failed")
    _record(log, name)


def _ran(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


NAMES = [f"task-{index}" for index in range(7)]


@pytest.mark.timeout(60)  # multiprocessing.Pool waited forever for the dead worker's result
def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(LmforgeError, match="a test worker process died"):
        with Executor(tmp_path, workers=2) as executor:
            executor.run(["dies"], os._exit, [(9,)], [1], "test", "task")
    assert not executor.done("dies")


def test_each_rank_runs_every_world_size_th_task(tmp_path):
    log = tmp_path / "log"
    executor = Executor(tmp_path / "work", workers=1, rank=1, world_size=3)
    for index, name in enumerate(NAMES):  # the other ranks have finished theirs: nothing to wait for
        if index % 3 != 1:
            executor.marker(name).parent.mkdir(parents=True, exist_ok=True)
            executor.marker(name).write_text("done\n")
    with executor:
        executor.run(NAMES, _record, [(log, name) for name in NAMES], [1] * 7, "test", "task")
    assert _ran(log) == ["task-1", "task-4"]
    assert all(executor.done(name) for name in NAMES)


def test_a_rerun_after_a_failure_runs_only_the_unfinished_tasks(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(RuntimeError, match="task-3 failed"):
        with Executor(tmp_path / "work", workers=1) as executor:
            executor.run(NAMES, _fail_on, [(log, name, "task-3") for name in NAMES], [1] * 7, "test", "task")
    assert _ran(log) == ["task-0", "task-1", "task-2"]
    assert [executor.done(name) for name in NAMES] == [True] * 3 + [False] * 4  # the failed task has no marker

    with Executor(tmp_path / "work", workers=1) as executor:
        executor.run(NAMES, _record, [(log, name) for name in NAMES], [1] * 7, "test", "task")
    assert _ran(log) == NAMES  # 0-2 once each, then 3-6


def test_a_pool_runs_tasks_in_worker_processes(tmp_path):
    log = tmp_path / "log"
    with Executor(tmp_path / "work", workers=2) as executor:
        executor.run(NAMES, _record, [(log, name) for name in NAMES], [10] * 7, "test", "task")
    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(name for name, _ in lines) == NAMES
    assert str(os.getpid()) not in {pid for _, pid in lines}
    assert all(executor.done(name) for name in NAMES)


def test_run_once_runs_on_rank_zero_only_once(tmp_path):
    log = tmp_path / "log"
    first = Executor(tmp_path / "work", workers=1)
    first.run_once("merge", _record, log, "merge")
    first.run_once("merge", _record, log, "merge")
    Executor(tmp_path / "work", workers=1, rank=1, world_size=2).run_once("merge", _record, log, "merge")  # waits: it is done
    assert _ran(log) == ["merge"]


def test_no_workers_is_an_error(tmp_path):
    with pytest.raises(LmforgeError, match="--workers 0"):
        Executor(tmp_path, workers=0)


@pytest.mark.parametrize("environment, expected", [
    ({}, (0, 1)),
    ({"RANK": "2", "WORLD_SIZE": "4"}, (2, 4)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (5, 8)),
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (1, 2)),  # torchrun's first
    ({"RANK": "1"}, (0, 1)),  # half a pair is not a distributed run
])
def test_distributed_rank_from_the_environment(monkeypatch, environment, expected):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert distributed_rank() == expected


@pytest.mark.parametrize("rank, world_size, message", [
    ("4", "4", "RANK=4 must be between 0 and WORLD_SIZE-1=3"),
    ("-1", "2", "RANK=-1 must be between 0"),
    ("one", "2", "must be integers"),
])
def test_a_bad_rank_is_an_error(monkeypatch, rank, world_size, message):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    with pytest.raises(LmforgeError, match=message):
        distributed_rank()
