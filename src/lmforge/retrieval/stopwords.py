"""Stop-word lists for `--stopwords en|zh|none|FILE`.

The built-in lists are short, function words only; a longer list is a file away. They are off by
default because dropping them loses some queries entirely ("to be or not to be" is all stop words),
while BM25's IDF already gives frequent words little weight.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import LmforgeError

ENGLISH_WORDS = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves
"""

CHINESE_WORDS = """
    的 了 和 是 在 也 都 就 而 及 与 或 着 被 把 让 给 对 从 向 于 以 之 其 这 那 这个 那个
    这些 那些 我 你 他 她 它 我们 你们 他们 她们 它们 自己 啊 吧 呢 吗 呀 哦 嗯 么 个 一个
    有 没有 不 没 很 还 又 再 就是 但是 但 可是 因为 所以 如果 虽然 然后 而且 并且 或者 还是
    已经 曾经 什么 怎么 为什么 哪 哪里 谁 多少 一些 一下 这样 那样 这么 那么 等 等等
"""

ENGLISH = frozenset(ENGLISH_WORDS.split())
CHINESE = frozenset(CHINESE_WORDS.split())

BUILT_IN = {"en": ENGLISH, "zh": CHINESE, "none": frozenset()}


def load_stopwords(spec: str) -> frozenset[str]:
    """The stop words named by `spec`: a built-in list (en, zh, none) or a UTF-8 file, one word a
    line, `#` starting a comment. Words are lowercased, as the analyzers lowercase tokens."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    path = Path(spec)
    if not path.is_file():
        raise LmforgeError(
            f"--stopwords {spec!r} is neither a built-in list ({', '.join(BUILT_IN)}) nor a file; "
            "give one of those names or the path of a file with one word a line"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise LmforgeError(f"{path}: stop-word file is not UTF-8 ({error.reason}); re-save it as UTF-8") from None
    words = (line.split("#", 1)[0].strip().lower() for line in lines)
    return frozenset(word for word in words if word)
