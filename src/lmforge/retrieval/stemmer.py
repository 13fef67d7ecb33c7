"""The Porter suffix-stripping stemmer for English, used by `--stem`.

M. F. Porter, "An algorithm for suffix stripping", Program 14(3):130-137, 1980; steps 1a to 5b as
published there (step 2 keeps the paper's ABLI -> ABLE). Stemming lets "connected", "connecting"
and "connection" meet at "connect", which raises recall on English text. A word of two letters or
fewer, or one holding anything but a-z, is returned unchanged, so Chinese terms and numbers pass
through.
"""

from __future__ import annotations

import functools

VOWELS = frozenset("aeiou")

# (suffix, replacement) in the paper's order; within a step only the longest matching suffix counts.
STEP_2 = (
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("abli", "able"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
    ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
    ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
)
STEP_3 = (
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
    ("ful", ""), ("ness", ""),
)
STEP_4 = (
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion",
    "ou", "ism", "ate", "iti", "ous", "ive", "ize",
)


def _is_consonant(word: str, index: int) -> bool:
    letter = word[index]
    if letter in VOWELS:
        return False
    if letter == "y":  # y is a vowel after a consonant ("happy"), a consonant otherwise ("toy")
        return index == 0 or not _is_consonant(word, index - 1)
    return True


def _measure(stem: str) -> int:
    """m in the paper's form [C](VC)^m[V]: how many vowel-consonant sequences the stem holds."""
    measure, after_vowel = 0, False
    for index in range(len(stem)):
        consonant = _is_consonant(stem, index)
        if consonant and after_vowel:
            measure += 1
        after_vowel = not consonant
    return measure


def _has_vowel(stem: str) -> bool:
    return any(not _is_consonant(stem, index) for index in range(len(stem)))


def _ends_double_consonant(stem: str) -> bool:
    return len(stem) >= 2 and stem[-1] == stem[-2] and _is_consonant(stem, len(stem) - 1)


def _ends_cvc(stem: str) -> bool:
    """*o: consonant-vowel-consonant, the last not w, x or y ("hop", not "how")."""
    return (
        len(stem) >= 3
        and _is_consonant(stem, len(stem) - 3)
        and not _is_consonant(stem, len(stem) - 2)
        and _is_consonant(stem, len(stem) - 1)
        and stem[-1] not in "wxy"
    )


def _step_1(word: str) -> str:
    if word.endswith(("sses", "ies")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]

    if word.endswith("eed"):
        if _measure(word[:-3]) > 0:
            word = word[:-1]
    else:
        for suffix in ("ed", "ing"):
            if word.endswith(suffix) and _has_vowel(word[: -len(suffix)]):
                word = word[: -len(suffix)]
                if word.endswith(("at", "bl", "iz")):
                    word += "e"
                elif _ends_double_consonant(word) and word[-1] not in "lsz":
                    word = word[:-1]
                elif _measure(word) == 1 and _ends_cvc(word):
                    word += "e"
                break

    if word.endswith("y") and _has_vowel(word[:-1]):
        word = word[:-1] + "i"
    return word


def _longest_suffix(word: str, suffixes) -> str | None:
    matches = [suffix for suffix in suffixes if word.endswith(suffix)]
    return max(matches, key=len) if matches else None


def _replace_suffix(word: str, rules: tuple[tuple[str, str], ...]) -> str:
    """Steps 2 and 3: replace the longest matching suffix when the stem before it has m > 0."""
    replacements = dict(rules)
    suffix = _longest_suffix(word, replacements)
    if suffix is None or _measure(word[: -len(suffix)]) == 0:
        return word
    return word[: -len(suffix)] + replacements[suffix]


def _step_4(word: str) -> str:
    """Drop the longest matching suffix when m > 1 (ION only after S or T)."""
    suffixes = [suffix for suffix in STEP_4 if suffix != "ion" or word.endswith(("sion", "tion"))]
    suffix = _longest_suffix(word, suffixes)
    if suffix is None or _measure(word[: -len(suffix)]) <= 1:
        return word
    return word[: -len(suffix)]


def _step_5(word: str) -> str:
    if word.endswith("e"):
        stem = word[:-1]
        measure = _measure(stem)
        if measure > 1 or (measure == 1 and not _ends_cvc(stem)):
            word = stem
    if word.endswith("ll") and _measure(word) > 1:
        word = word[:-1]
    return word


@functools.lru_cache(maxsize=1 << 16)
def porter_stem(word: str) -> str:
    """The Porter stem of a lowercase English word; other words unchanged."""
    if len(word) <= 2 or not word.isascii() or not word.isalpha() or not word.islower():
        return word
    word = _step_1(word)
    word = _replace_suffix(word, STEP_2)
    word = _replace_suffix(word, STEP_3)
    word = _step_4(word)
    return _step_5(word)
