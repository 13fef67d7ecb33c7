import pytest

from lmforge.data.clean import Cleaner, CleanStep
from lmforge.data.document import Document
from lmforge.data.recipe import CleanConfig, Substitution
from lmforge.errors import LmforgeError


def clean(text, **options):
    return Cleaner(CleanConfig(**options)).clean(text)


def test_nfkc_folds_full_width():
    assert clean("１９９８年，ＡＢＣ") == "1998年,ABC"
    assert clean("１９９８年", nfkc=False) == "１９９８年"


def test_control_characters_and_ansi_escapes():
    assert clean("\x1b[31m红色\x1b[0m text\x00\x07 with\u200b zero\ufeff width") == "红色 text with zero width"
    assert clean("tab\there") == "tab here"


def test_html_tags_entities_and_scripts():
    text = "<html><script>var x = 1;</script><p>Fish &amp; chips</p><br>caf&eacute; &#20013;</html>"
    assert clean(text) == "Fish & chips\n\ncafé 中"
    assert clean("a < b and c > d") == "a < b and c > d"


def test_whitespace_runs_and_blank_lines():
    assert clean("  many    spaces  \r\n\n\n\nnext\t\tline  ") == "many spaces\n\nnext line"


def test_substitutions_strip_word_segmentation_tags():
    substitutions = [
        Substitution(r"(?m)(?<=\S)/[A-Za-z]{1,4}(?=  |$)", ""),
        Substitution(r"(?<=[^\x00-\x7f])\s+|\s+(?=[^\x00-\x7f])", ""),
    ]
    tagged = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  一九九八年/t  新年/t  讲话/n  （/w  附/v  图片/n  １/m  张/q  ）/w"
    assert clean(tagged, substitutions=substitutions) == "迈向充满希望的新世纪——一九九八年新年讲话(附图片1张)"


def test_boilerplate_lines_removed():
    text = "Real content here.\nAll rights reserved 2024.\n版权所有 某网站\nMore content."
    assert clean(text) == "Real content here.\nMore content."
    assert clean(text, boilerplate_lines=[]) == text


def test_bad_regex_names_the_field():
    with pytest.raises(LmforgeError, match="clean.substitutions"):
        Cleaner(CleanConfig(substitutions=[Substitution("(", "")]))


def test_step_counts_and_drops_empty_documents():
    step = CleanStep(CleanConfig())
    documents = [Document("a", "<p>  hello  </p>", "s"), Document("b", "<br>\x00 ", "s")]
    kept = list(step.run(documents))
    assert [d.text for d in kept] == ["hello"]
    assert (step.stats.documents_in, step.stats.documents_kept) == (2, 1)
    assert step.stats.characters_in == len("<p>  hello  </p>") + len("<br>\x00 ")
    assert step.stats.characters_kept == 5
    assert step.stats.dropped == {"empty": {"documents": 1, "characters": 6}}
