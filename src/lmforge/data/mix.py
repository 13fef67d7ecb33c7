"""GPT-3 style mixing: each source is seen a chosen number of epochs, or enough epochs to make up
a chosen share of the training mixture (Brown et al. 2020, table 2.2: Wikipedia 3.4 epochs,
Common Crawl 0.44). Fractional epochs sample documents by a hash of their id and the seed, so a
mixture is the same on every run and every machine."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

from lmforge.data.document import Document
from lmforge.data.recipe import MixConfig, Source
from lmforge.data.step import PipelineStep
from lmforge.data.words import unit_interval
from lmforge.errors import LmforgeError


@dataclasses.dataclass
class MixPlan:
    """Per source: epochs to apply, the share of training characters asked for, characters available."""

    epochs: dict[str, float]
    asked: dict[str, float]
    available: dict[str, int]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> MixPlan:
        return cls(**record)


def check_mix(sources: list[Source], config: MixConfig) -> None:
    """Fail early, before any reading, on weights and epochs that cannot be honoured."""
    names = [source.name for source in sources]
    for field, values in (("mix.weights", config.weights), ("mix.epochs", config.epochs)):
        for name in values:
            if name not in names:
                raise LmforgeError(f"{field}: no source named {name!r} (sources: {', '.join(names)}); name inputs with --input NAME=PATH")
    weights, epochs = source_settings(sources, config)
    both = [name for name in names if name in weights and name in epochs]
    if both:
        raise LmforgeError(f"source {both[0]!r} has both a weight and epochs; give one of them")
    if weights and len(weights) != len(names):
        missing = [name for name in names if name not in weights]
        raise LmforgeError(f"source {missing[0]!r} has no weight; give every source a weight, or use epochs instead")
    if weights and sum(weights.values()) <= 0:
        raise LmforgeError("mix weights sum to zero; give at least one source a positive weight")


def source_settings(sources: list[Source], config: MixConfig) -> tuple[dict[str, float], dict[str, float]]:
    weights = {source.name: source.weight for source in sources if source.weight is not None}
    epochs = {source.name: source.epochs for source in sources if source.epochs is not None}
    weights.update(config.weights)
    epochs.update(config.epochs)
    return weights, epochs


def plan_mixture(sources: list[Source], config: MixConfig, available: dict[str, int]) -> MixPlan:
    """Epochs per source from weights (share of `total_chars`, by default the corpus size) or epochs."""
    weights, epochs = source_settings(sources, config)
    names = [source.name for source in sources]
    if weights:
        total_weight = sum(weights.values())
        total = config.total_chars if config.total_chars is not None else sum(available.values())
        asked = {name: weights[name] / total_weight for name in names}
        planned = {name: asked[name] * total / available[name] if available[name] else 0.0 for name in names}
    else:
        planned = {name: float(epochs.get(name, 1.0)) for name in names}
        mixture = sum(planned[name] * available[name] for name in names)
        asked = {name: planned[name] * available[name] / mixture if mixture else 0.0 for name in names}
    return MixPlan(epochs=planned, asked=asked, available=dict(available))


def copies(document_id: str, epochs: float, seed: int) -> int:
    """How many times a document goes into training: the whole epochs, plus one more with
    probability equal to the fractional part (decided by the id's hash, so it is reproducible)."""
    whole = math.floor(epochs)
    return whole + (1 if unit_interval(document_id, seed) < epochs - whole else 0)


class MixStep(PipelineStep):
    """Sets `cache["copies"]` on each document; one given zero copies is dropped (`mixture_sample`)."""

    name = "mix"

    def __init__(self, plan: MixPlan, seed: int):
        super().__init__()
        self.plan = plan
        self.seed = seed

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.count_in(document)
            count = copies(document.id, self.plan.epochs.get(document.source, 1.0), self.seed)
            if count == 0:
                self.drop(document, "mixture_sample")
                continue
            document.cache["copies"] = count
            self.stats.add("copies", count)
            yield self.keep(document)
