"""Runs the tasks of a pipeline phase: this machine's share, on a pool of processes, skipping
tasks that already finished.

As in datatrove's executors, a task that finishes writes a completion marker (atomically, after
all its outputs were renamed into place); a rerun after a crash or a kill skips marked tasks and
redoes the rest. Across machines, `RANK`/`WORLD_SIZE` (or Slurm's `SLURM_PROCID`/`SLURM_NTASKS`)
pick every WORLD_SIZE-th task, and a phase ends when the markers of all ranks exist on the shared
output directory, which is how the machines wait for each other without any other channel.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lmforge.atomic import atomic_write_text
from lmforge.errors import LmforgeError

POLL_SECONDS = 0.5
KILL_WAIT_SECONDS = 5
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's or Slurm's environment; (0, 1) when neither is set."""
    for rank_name, size_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_name in os.environ and size_name in os.environ:
            try:
                rank, world_size = int(os.environ[rank_name]), int(os.environ[size_name])
            except ValueError:
                raise LmforgeError(f"{rank_name}={os.environ[rank_name]!r} and {size_name}={os.environ[size_name]!r} must be integers") from None
            if not 0 <= rank < world_size:
                raise LmforgeError(f"{rank_name}={rank} must be between 0 and {size_name}-1={world_size - 1}")
            return rank, world_size
    return 0, 1


def _initialise_worker() -> None:
    # Ctrl-C signals the whole process group. Only the parent acts on it (it kills the workers), so a
    # worker neither prints a KeyboardInterrupt traceback nor dies half-way through a queue operation.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):  # and a parent killed outright (kill -9, out of memory) takes its workers along
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The tokenizers library's own thread pool and a process pool would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _run_task(job: tuple[Callable, tuple, Path]) -> None:
    function, arguments, marker = job
    function(*arguments)
    atomic_write_text(marker, "done\n")


class Executor:
    """Holds the worker pool for a whole run (started before any tokenizer threads exist, so
    forking is safe) and the completion markers under `work/done/`.

    The pool is a ProcessPoolExecutor rather than a multiprocessing.Pool: it notices a worker that
    died (killed for memory, say) and fails instead of waiting forever for its result, and on an
    interrupt or a failed task its queued tasks can be cancelled and its workers killed without
    joining queues a dead worker may have left locked. Killing a task half-way is safe: its outputs
    get their final names only when it ends, and its temporary files are removed by the caller."""

    def __init__(self, work: Path, workers: int, rank: int = 0, world_size: int = 1):
        if workers < 1:
            raise LmforgeError(f"--workers {workers}: give at least 1")
        self.work, self.workers, self.rank, self.world_size = work, workers, rank, world_size
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Executor:
        if self.workers > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method), initializer=_initialise_worker)
            # With fork, every worker starts at the first submit: make that now, while this process has no other threads.
            self.pool.submit(os.getpid).result()
        return self

    def __exit__(self, *exception: Any) -> None:
        if self.pool is None:
            return
        if exception[0] is None:
            self.pool.shutdown()
        else:
            # There is no public way to reach the workers before Python 3.14's kill_workers().
            workers = list(self.pool._processes.values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.kill()
            for worker in workers:
                worker.join(KILL_WAIT_SECONDS)
        self.pool = None

    def marker(self, name: str) -> Path:
        return self.work / "done" / name

    def done(self, name: str) -> bool:
        return self.marker(name).exists()

    def run(self, names: Sequence[str], function: Callable, arguments: Sequence[tuple], sizes: Sequence[int], description: str, unit: str) -> None:
        """Run `function(*arguments[i])` for this rank's unfinished tasks, then wait for all ranks."""
        mine = [index for index in range(len(names)) if index % self.world_size == self.rank]
        pending = [index for index in mine if not self.done(names[index])]
        finished = sum(sizes[index] for index in mine) - sum(sizes[index] for index in pending)
        jobs = [(function, arguments[index], self.marker(names[index])) for index in pending]
        with tqdm(total=sum(sizes[index] for index in mine), initial=finished, desc=description, unit=unit,
                  unit_scale=True, file=sys.stderr, dynamic_ncols=True, leave=False) as bar:
            if self.pool is None:
                for index, job in zip(pending, jobs):
                    _run_task(job)
                    bar.update(sizes[index])
            else:
                futures = {self.pool.submit(_run_task, job): sizes[index] for index, job in zip(pending, jobs)}
                for future in as_completed(futures):
                    try:
                        future.result()
                    except BrokenProcessPool:
                        raise LmforgeError(
                            f"a {description} worker process died (out of memory?); rerun the same command to resume, "
                            "with fewer --workers or a smaller --read.task_bytes"
                        ) from None
                    bar.update(futures[future])
        self.wait_for(names, description)

    def run_once(self, name: str, function: Callable, *arguments: Any) -> None:
        """A step only rank 0 does (clustering, tokenizer training, the final merge); the others wait."""
        if self.rank == 0 and not self.done(name):
            _run_task((function, arguments, self.marker(name)))
        self.wait_for([name], name)

    def wait_for(self, names: Sequence[str], description: str) -> None:
        missing = [name for name in names if not self.done(name)]
        if not missing:
            return
        with tqdm(total=len(names), initial=len(names) - len(missing), desc=f"{description}: waiting for other ranks",
                  file=sys.stderr, leave=False) as bar:
            while missing:
                time.sleep(POLL_SECONDS)
                still = [name for name in missing if not self.done(name)]
                bar.update(len(missing) - len(still))
                missing = still
