"""The tasks `lmforge eval tasks` knows by name, and choosing among them."""

from __future__ import annotations

import difflib
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.chinese import CHINESE_TASKS
from lmforge.eval.tasks.definition import TaskDefinition
from lmforge.eval.tasks.english import ENGLISH_TASKS
from lmforge.eval.tasks.task_file import task_from_file

BUILTIN_TASKS: dict[str, TaskDefinition] = {task.name: task for task in (*ENGLISH_TASKS, *CHINESE_TASKS)}


def select_tasks(names: str | None, task_files: list[Path] = ()) -> list[TaskDefinition]:
    """The tasks of a comma-separated list of names, then those of the task files, each once."""
    chosen: dict[str, TaskDefinition] = {}
    for name in (names or "").split(","):
        name = name.strip()
        if not name:
            continue
        if name not in BUILTIN_TASKS:
            close = difflib.get_close_matches(name, BUILTIN_TASKS, n=1)
            suggestion = f"did you mean {close[0]}? " if close else ""
            raise LmforgeError(f"unknown task {name!r}; {suggestion}known tasks: {', '.join(BUILTIN_TASKS)} "
                               "(or give your own with --task-file)")
        chosen[name] = BUILTIN_TASKS[name]
    for path in task_files:
        task = task_from_file(path)
        if task.name in chosen:
            raise LmforgeError(f"--task-file {path}: its task name {task.name!r} (the file's stem) is already taken; "
                               "rename the file")
        chosen[task.name] = task
    if not chosen:
        raise LmforgeError(f"no task given: --tasks takes a comma-separated list of {', '.join(BUILTIN_TASKS)}, "
                           "--task-file a JSONL file of your own")
    return list(chosen.values())
