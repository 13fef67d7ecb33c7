import json

import numpy as np
import pytest

from lmforge.data.document import Document
from lmforge.data.quality import QualityModel, QualityStep, train_classifier
from lmforge.errors import LmforgeError

GOOD_WORDS = "the river valley farmers settled banks learned seasonal floods brought rich soil villages grew market towns".split()
GOOD_HAN = "人民政府继续坚持发展经济建设社会文化教育科学技术进步"
BAD_WORDS = "click free win casino bonus cheap viagra prize deal discount hurry".split()
BAD_HAN = "点击领取优惠券免费赢大奖加微信包邮限时抢购"


def synthetic(rng, count, words, han):
    documents = []
    for index in range(count):
        english = " ".join(rng.choice(words, size=30))
        chinese = "".join(rng.choice(list(han), size=30))
        documents.append(Document(f"{index}", f"{english} {chinese}" if index % 2 else english if index % 4 else chinese, "s"))
    return documents


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    positives = synthetic(rng, 200, GOOD_WORDS, GOOD_HAN)
    negatives = synthetic(rng, 200, BAD_WORDS, BAD_HAN)
    return train_classifier(positives, negatives, val_fraction=0.25, dimensions=1 << 14)


def test_classifier_separates_an_easy_set(model):
    assert model.metrics["heldout_examples"] >= 60
    assert model.metrics["heldout_precision"] >= 0.95
    assert model.metrics["heldout_recall"] >= 0.95
    assert model.score(Document("g", "the farmers settled the river banks 人民政府发展教育", "s")) > 0.5
    assert model.score(Document("b", "click free casino bonus 点击领取优惠券", "s")) < 0.5


def test_model_file_is_safetensors_not_pickle(model, tmp_path):
    path = tmp_path / "quality.safetensors"
    model.save(path)
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    assert header["__metadata__"]["format"] == "lmforge.quality.v1"
    loaded = QualityModel.load(path)
    assert np.array_equal(loaded.weights, model.weights) and loaded.metrics == model.metrics
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(LmforgeError, match="not a safetensors file"):
        QualityModel.load(tmp_path / "junk.safetensors")
    with pytest.raises(LmforgeError, match="does not exist"):
        QualityModel.load(tmp_path / "missing.safetensors")


def test_quality_step_records_scores_and_drops(model):
    step = QualityStep(model, min_quality=0.5)
    documents = [Document("g", "the river valley farmers learned seasonal floods", "s"), Document("b", "cheap viagra casino prize", "s")]
    kept = list(step.run(documents))
    assert [d.id for d in kept] == ["g"]
    assert 0.5 <= kept[0].meta["quality"] <= 1.0
    assert step.stats.dropped == {"min_quality": {"documents": 1, "characters": len("cheap viagra casino prize")}}


def test_training_needs_both_classes():
    with pytest.raises(LmforgeError, match="both positive and negative"):
        train_classifier([Document("a", "text", "s")], [], val_fraction=0.0)
