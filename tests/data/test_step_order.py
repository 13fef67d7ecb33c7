"""Every step of `prepare` has one place in the pipeline's order, and a step without one is an
error rather than a step whose counts and dropped documents silently go missing."""

from __future__ import annotations

import pytest

from lmforge.data.clean import CleanStep
from lmforge.data.document import Document
from lmforge.data.filters import ContentStep
from lmforge.data.merge import _merge_excluded
from lmforge.data.pipeline import filter_steps
from lmforge.data.recipe import CleanConfig, FilterConfig, Recipe, Source
from lmforge.data.step import ExclusionWriter, PipelineStep
from lmforge.data.step_order import STEP_ORDER, in_step_order, steps_in_order
from lmforge.data.work_directory import Run


class UnlistedStep(PipelineStep):
    name = "unlisted"


def test_steps_are_sorted_into_the_pipeline_order():
    steps = [ContentStep(FilterConfig()), CleanStep(CleanConfig())]
    assert [step.name for step in steps_in_order(steps)] == ["clean", "content"]
    assert in_step_order(["tokenize", "read", "dedup"]) == ["read", "dedup", "tokenize"]


def test_the_filter_phase_runs_in_the_pipeline_order():
    names = [step.name for step in filter_steps(Recipe(sources=[Source("web", ["web.jsonl"])]))]
    assert names == [name for name in STEP_ORDER if name in names] and len(names) > 1


def test_a_step_missing_from_the_order_is_an_error():
    with pytest.raises(ValueError, match="'unlisted' is missing from the step order.*PIPELINE_STEPS"):
        steps_in_order([CleanStep(CleanConfig()), UnlistedStep()])
    with pytest.raises(ValueError, match="'unlisted' is missing from the step order"):
        in_step_order(["clean", "unlisted"])


def test_the_merge_refuses_exclusions_of_a_step_missing_from_the_order(tmp_path):
    """Before, such a step's excluded/ file was skipped without a word."""
    run = Run(Recipe(sources=[]), tmp_path / "work", "tmp")
    step = UnlistedStep()
    step.excluded = ExclusionWriter(run.work / "excluded" / step.name / "00000.jsonl.gz")
    step.drop(Document(id="d0", text="some text", source="web"), "too odd")
    step.excluded.commit()
    with pytest.raises(ValueError, match="'unlisted' is missing from the step order"):
        _merge_excluded(run, tmp_path / "out", ["00000"])

