"""The order of `prepare`'s steps, defined once: the tuple below.

The pipeline runs its steps in this order, report.json lists them in it, and the merge writes
one exclusion file for each step it names. A step not named here is an error wherever it shows
up, rather than a step whose counts and dropped documents silently go missing from the output.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmforge.data.clean import CleanStep
from lmforge.data.dedup import DedupStep
from lmforge.data.filters import ContentStep, GopherQualityStep
from lmforge.data.language import LanguageStep
from lmforge.data.mix import MixStep
from lmforge.data.quality import QualityStep
from lmforge.data.readers import ReadStep
from lmforge.data.repetition import RepetitionStep
from lmforge.data.step import PipelineStep
from lmforge.data.tokenize_step import TokenizeStep

# The filter phase (read ... quality_model), then the tokenize phase (dedup, mix, tokenize).
PIPELINE_STEPS: tuple[type[PipelineStep], ...] = (
    ReadStep, CleanStep, LanguageStep, GopherQualityStep, RepetitionStep, ContentStep, QualityStep,
    DedupStep, MixStep, TokenizeStep,
)
STEP_ORDER = [step.name for step in PIPELINE_STEPS]


def _position(name: str) -> int:
    if name not in STEP_ORDER:
        raise ValueError(
            f"pipeline step {name!r} is missing from the step order, so its counts and excluded documents would be lost; "
            "add its class to PIPELINE_STEPS in lmforge/data/step_order.py"
        )
    return STEP_ORDER.index(name)


def in_step_order(names: Iterable[str]) -> list[str]:
    """Step names (of stats or exclusion directories) sorted into the pipeline's order."""
    return sorted(set(names), key=_position)


def steps_in_order(steps: Iterable[PipelineStep]) -> list[PipelineStep]:
    """Built steps sorted into the pipeline's order, whatever order they were built in."""
    return sorted(steps, key=lambda step: _position(step.name))
