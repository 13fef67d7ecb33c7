import dataclasses

import pytest

from lmforge.data.document import Document
from lmforge.data.filters import ContentStep, GopherQualityStep
from lmforge.data.language import LanguageStep, detect_language
from lmforge.data.recipe import FilterConfig
from lmforge.data.repetition import RepetitionStep
from lmforge.data.step import ExclusionWriter
from lmforge.data.words import analyse

ENGLISH = (
    "The history of the river valley is long and complex. Farmers settled along the banks thousands of years ago, "
    "and they learned to predict the seasonal floods that brought rich soil to their fields. Over centuries, small "
    "villages grew into market towns with temples, granaries and workshops. Traders carried grain, pottery and cloth "
    "to distant cities, while scholars recorded the movements of stars to plan the planting calendar. Today the region "
    "is known for its archaeological sites, which attract researchers and visitors from around the world."
)
CHINESE = (
    "一九九七年，是中国发展历史上非常重要的很不平凡的一年。人民决心继承邓小平同志的遗志，继续把建设有特色社会主义"
    "事业推向前进。政府将继续坚持奉行独立自主的和平外交政策，同世界各国发展友好关系，为维护地区稳定作出贡献。"
)


def reason(step, text):
    """The reason `step` drops `text` for, or None when it keeps it."""
    document = Document("doc", text, "test")
    document.meta["language"] = detect_language(text)[0]
    step.excluded = None
    kept = list(step.run([document]))
    if kept:
        return None
    (name,) = step.stats.dropped
    return name


def quality(**changes):
    return GopherQualityStep(dataclasses.replace(FilterConfig(), **changes))


def test_clean_documents_pass_every_rule():
    for text in (ENGLISH, CHINESE):
        assert reason(quality(), text) is None
        assert reason(RepetitionStep(FilterConfig()), text) is None
        assert reason(ContentStep(FilterConfig()), text) is None


def test_han_characters_count_as_words():
    words = analyse("中文text, 二 words_2 Ünïcode")  # 中 / 文 / text / 二 / words_2 / ünïcode
    assert words.lengths.tolist() == [1, 1, 4, 1, 7, 7]
    assert words.cjk.tolist() == [True, True, False, True, False, False]
    assert analyse("Ünïcode").hashes[0] == analyse("ünïcode").hashes[0]  # lower-cased
    assert len(analyse(CHINESE)) == sum(1 for character in CHINESE if "\u4e00" <= character <= "\u9fff")
    assert reason(quality(min_words=len(analyse(CHINESE)) + 1), CHINESE) == "min_words"


@pytest.mark.parametrize(
    "text, changes, expected",
    [
        ("far too short", {}, "min_words"),
        (ENGLISH, {"max_words": 40}, "max_words"),
        (ENGLISH, {"min_chars": 10_000}, "min_chars"),
        (ENGLISH, {"max_chars": 100}, "max_chars"),
        (" ".join(["a b of it to"] * 20), {}, "min_mean_word_length"),
        (ENGLISH + " " + " ".join(["incomprehensibilities"] * 200), {"max_duplicate_ngram_chars": {}}, "max_mean_word_length"),
        (ENGLISH + " #tag" * 12, {}, "max_symbol_word_ratio"),
        ("\n".join("• " + line for line in ENGLISH.split(". ")), {}, "max_bullet_lines"),
        ("\n".join(line + " ..." for line in ENGLISH.split(". ")), {"max_symbol_word_ratio": None}, "max_ellipsis_lines"),
        (ENGLISH + " " + " ".join(str(n) for n in range(100, 160)), {}, "min_alpha_words"),
        (ENGLISH.replace(" the ", " a ").replace(" and ", " plus ").replace(" of ", " in ").replace(" to ", " at ").replace(" that ", " which ").replace(" with ", " plus "), {}, "min_stop_words"),
        (CHINESE.replace("的", "之").replace("是", "乃").replace("和", "同").replace("有", "具").replace("不", "非").replace("一", "壹").replace("为", "做").replace("上", "里").replace("中", "内"), {}, "min_stop_words"),
    ],
)
def test_quality_rules(text, changes, expected):
    assert reason(quality(**changes), text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\n".join([ENGLISH] + ["Buy the book today, read it tonight."] * 5), "max_duplicate_lines"),
        ("\n".join(ENGLISH.split(". ") + ["A long line on weather, rivers and the seasons of this valley. " * 5] * 2), "max_duplicate_line_chars"),
        (ENGLISH + " " + "the cat " * 60, "max_top_ngram_chars[2]"),
        (ENGLISH + " " + "one two three four five six seven eight nine ten eleven " * 3, "max_duplicate_ngram_chars[5]"),
        (CHINESE + "我们热爱和平的生活" * 6, "max_duplicate_ngram_chars[5]"),
    ],
)
def test_repetition_rules(text, expected):
    assert reason(RepetitionStep(FilterConfig()), text) == expected


def test_thresholds_can_be_turned_off():
    text = ENGLISH + " #tag" * 12
    assert reason(quality(max_symbol_word_ratio=None), text) is None


def test_language_detection_by_script():
    assert detect_language(CHINESE)[0] == "zh"
    assert detect_language(ENGLISH) == ("en", 1.0)
    assert detect_language("これは日本語の文章です")[0] == "ja"
    assert detect_language("한국어 문장입니다")[0] == "ko"
    assert detect_language("Это русский текст")[0] == "ru"
    assert detect_language("12345 !!!") == ("unknown", 0.0)
    assert reason(LanguageStep(["zh"], 0.5), ENGLISH) == "language"
    assert reason(LanguageStep(["zh"], 0.9), CHINESE + " mixed with a lot of english words here and there in it") == "language_score"
    assert reason(LanguageStep(["zh", "en"], 0.5), ENGLISH) is None


def test_banned_words_and_ads():
    config = dataclasses.replace(FilterConfig(), banned_words=["ass", "赌博"])
    step = ContentStep(config)
    assert reason(step, ENGLISH + " A class of its own.") is None  # whole words for Latin script
    assert reason(ContentStep(config), ENGLISH + " What an ass.") == "banned_words"
    assert reason(ContentStep(config), CHINESE + "网上赌博平台") == "banned_words"  # substrings for Chinese
    assert reason(ContentStep(FilterConfig()), "Limited time offer! Buy now and get free shipping.") == "max_ad_lines"
    assert reason(ContentStep(FilterConfig()), CHINESE + "\n加微信 abc12345 领取优惠券") == "max_ad_lines"


def test_banned_words_file(tmp_path):
    path = tmp_path / "banned.txt"
    path.write_text("forbidden\n禁词\n", encoding="utf-8")
    step = ContentStep(dataclasses.replace(FilterConfig(), banned_words_file=str(path)))
    assert reason(step, CHINESE + "禁词") == "banned_words"


def test_dropped_documents_are_written_with_their_reason(tmp_path):
    import gzip
    import json

    step = quality()
    step.excluded = ExclusionWriter(tmp_path / "quality_rules.jsonl.gz")
    list(step.run([Document("keep", ENGLISH, "s"), Document("drop", "too short", "s")]))
    step.excluded.commit()
    records = [json.loads(line) for line in gzip.open(tmp_path / "quality_rules.jsonl.gz", "rt", encoding="utf-8")]
    assert [(r["id"], r["step"], r["reason"], r["text"]) for r in records] == [("drop", "quality_rules", "min_words", "too short")]
    assert step.stats.documents_kept == 1 and step.stats.dropped["min_words"]["documents"] == 1
