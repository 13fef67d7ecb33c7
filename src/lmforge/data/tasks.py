"""How `prepare` cuts its input into tasks: contiguous byte ranges fixed by the input and the
recipe alone, never by --workers or the number of machines, so the output is the same however the
tasks are spread (and a resumed run finds its finished tasks by name)."""

from __future__ import annotations

import dataclasses

from lmforge.data.inputs import InputFile
from lmforge.data.readers import Piece, split_file
from lmforge.data.recipe import Recipe


def plan_tasks(recipe: Recipe, files: list[InputFile]) -> list[list[Piece]]:
    """Contiguous runs of input, about `read.task_bytes` each: big files are cut, small ones grouped."""
    total = sum(input_file.size for input_file in files)
    task_bytes = recipe.read.task_bytes or min(max(total // 64, 1 << 20), 64 << 20)
    sources = {source.name: source for source in recipe.sources}
    pieces: list[Piece] = []
    for input_file in files:
        source = sources[input_file.source]
        read = dataclasses.replace(recipe.read, text_field=source.text_field or recipe.read.text_field, unit=source.unit or recipe.read.unit)
        pieces += split_file(input_file, read, task_bytes)
    tasks: list[list[Piece]] = []
    size = 0
    for piece in pieces:
        if not tasks or size + piece.size > task_bytes:
            tasks.append([])
            size = 0
        tasks[-1].append(piece)
        size += piece.size
    return tasks
