import pytest

from lmforge.data.document import Document
from lmforge.data.mix import MixStep, check_mix, copies, plan_mixture
from lmforge.data.recipe import MixConfig, Source
from lmforge.errors import LmforgeError


def test_epochs_repeat_and_sample_deterministically():
    assert copies("doc", 3.0, seed=0) == 3
    draws = [copies(f"doc{index}", 0.44, seed=0) for index in range(5000)]
    assert set(draws) == {0, 1} and abs(sum(draws) / 5000 - 0.44) < 0.03
    assert draws == [copies(f"doc{index}", 0.44, seed=0) for index in range(5000)]
    assert draws != [copies(f"doc{index}", 0.44, seed=1) for index in range(5000)]
    assert sum(copies(f"d{index}", 3.4, seed=0) for index in range(5000)) / 5000 == pytest.approx(3.4, abs=0.03)


def test_weights_become_epochs_like_gpt3():
    sources = [Source("web", ["w"], weight=0.6), Source("books", ["b"], weight=0.4)]
    plan = plan_mixture(sources, MixConfig(), {"web": 9000, "books": 1000})
    assert plan.asked == {"web": 0.6, "books": 0.4}
    assert plan.epochs["web"] == pytest.approx(6000 / 9000)  # the big crawl is subsampled
    assert plan.epochs["books"] == pytest.approx(4.0)  # the small clean source is repeated
    sized = plan_mixture(sources, MixConfig(total_chars=20_000), {"web": 9000, "books": 1000})
    assert sized.epochs["books"] == pytest.approx(8.0)


def test_epochs_give_the_asked_shares():
    sources = [Source("a", ["a"], epochs=2.0), Source("b", ["b"])]
    plan = plan_mixture(sources, MixConfig(epochs={"b": 0.5}), {"a": 100, "b": 400})
    assert plan.epochs == {"a": 2.0, "b": 0.5}
    assert plan.asked == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize(
    "sources, config, message",
    [
        ([Source("a", ["a"], weight=1.0), Source("b", ["b"])], MixConfig(), "source 'b' has no weight"),
        ([Source("a", ["a"], weight=1.0, epochs=2.0)], MixConfig(), "both a weight and epochs"),
        ([Source("a", ["a"])], MixConfig(weights={"typo": 1.0}), "no source named 'typo'"),
    ],
)
def test_mix_errors_name_the_fix(sources, config, message):
    with pytest.raises(LmforgeError, match=message):
        check_mix(sources, config)


def test_negative_shares_are_refused_where_they_are_given():
    with pytest.raises(LmforgeError, match=r"--mix.epochs\[a\] must be ≥ 0, got -1.0"):
        MixConfig(epochs={"a": -1.0})
    with pytest.raises(LmforgeError, match=r"source 'a' field 'weight' must be ≥ 0"):
        Source("a", ["a"], weight=-2.0)


def test_mix_step_drops_unsampled_documents():
    plan = plan_mixture([Source("a", ["a"], epochs=0.5)], MixConfig(), {"a": 10})
    step = MixStep(plan, seed=0)
    documents = [Document(f"{index}", "text", "a") for index in range(200)]
    kept = list(step.run(documents))
    assert 70 < len(kept) < 130
    assert step.stats.dropped["mixture_sample"]["documents"] == 200 - len(kept)
    assert all(document.cache["copies"] == 1 for document in kept)
