"""Zero- and few-shot tasks as data (definitions, sources, prompt formats) and their evaluation on
the scoring engine, with the prompt formats and metrics of lm-evaluation-harness."""

from lmforge.eval.tasks.catalog import BUILTIN_TASKS, select_tasks
from lmforge.eval.tasks.definition import Example, TaskData, TaskDefinition
from lmforge.eval.tasks.evaluate import TaskResult, evaluate_task, task_prompts
from lmforge.eval.tasks.loading import LoadedTask, load_task
from lmforge.eval.tasks.requests import encode_requests
from lmforge.eval.tasks.sources import Locator

__all__ = ["BUILTIN_TASKS", "Example", "LoadedTask", "Locator", "TaskData", "TaskDefinition", "TaskResult",
           "encode_requests", "evaluate_task", "load_task", "select_tasks", "task_prompts"]
