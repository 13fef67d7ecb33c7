"""The prepare recipe: one dataclass per step, so a YAML file maps onto them key for key.

`lmforge prepare --config recipe.yaml` fills these from YAML, and `--filters.min_words 20` style
options override single fields. Thresholds follow the Gopher paper (Rae et al. 2021, appendix A)
unless a comment says otherwise; `None` turns a rule off.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import ClassVar, Literal

from lmforge.bounds import Bound, at_least, between, check_fields
from lmforge.errors import LmforgeError

TextUnit = Literal["file", "paragraph", "line"]
OnBadLine = Literal["error", "skip"]


@dataclasses.dataclass
class Source:
    """A named part of the corpus. GPT-3 sampled its sources by quality, not size: give a `weight`
    (share of the training mixture, in characters) or a number of `epochs` (1.0 = each document
    once, 3.4 = seen 3.4 times, 0.44 = a 44 % sample). Neither means one epoch."""

    name: str
    paths: list[str]
    weight: float | None = None
    epochs: float | None = None
    text_field: str | None = None
    unit: TextUnit | None = None

    BOUNDS: ClassVar[dict[str, Bound]] = {"weight": at_least(0), "epochs": at_least(0)}

    def __post_init__(self) -> None:
        check_fields(self, f"source '{self.name}' field '{{}}'")


@dataclasses.dataclass
class ReadConfig:
    """How files become documents."""

    unit: TextUnit = "paragraph"
    """.txt files: one document per `file`, per blank-line separated `paragraph`, or per `line`."""
    text_field: str = "text"
    """.jsonl/.json/.parquet: the field holding the text; a dotted path such as `meta.body` or
    `messages[].content` (the list's strings are joined by newlines)."""
    id_field: str | None = None
    """Field holding a document id; without it the id is `source/path:line`."""
    encoding: str = "utf-8"
    """Text encoding of the files (e.g. `gb18030` for older Chinese corpora)."""
    task_bytes: int | None = None
    """Input bytes per task; by default 1/64 of the input, between 1 MB and 64 MB. Large
    uncompressed .txt/.jsonl files are cut at line boundaries to make tasks of this size."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"task_bytes": at_least(1)}

    def __post_init__(self) -> None:
        check_fields(self, "--read.{}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise LmforgeError(f"--read.encoding '{self.encoding}' is not a text encoding Python knows (utf-8, gb18030, latin-1, ...)") from None


@dataclasses.dataclass
class Substitution:
    """A regular expression replaced everywhere (Python `re` syntax; `\\1` refers to groups)."""

    pattern: str
    replacement: str = ""


DEFAULT_BOILERPLATE = [
    r"(?i)\b(cookie policy|privacy policy|terms of (use|service)|all rights reserved)\b",
    r"(?i)\b(enable javascript|javascript is disabled|lorem ipsum)\b",
    r"版权所有|免责声明|未经许可.{0,6}不得转载|点击(这里|此处)",
]


@dataclasses.dataclass
class CleanConfig:
    """Normalisation applied to every document before any filter sees it."""

    nfkc: bool = True
    """Unicode NFKC: full-width `１９９８年` becomes `1998年`, ligatures and compatibility forms fold."""
    remove_control: bool = True
    """Drop ANSI escape sequences, control characters (tab and newline kept) and zero-width marks."""
    remove_html: bool = True
    """Drop HTML tags, scripts and styles; decode entities such as `&amp;`."""
    normalize_whitespace: bool = True
    """Collapse runs of spaces, trim lines, keep at most one blank line between paragraphs."""
    substitutions: list[Substitution] = dataclasses.field(default_factory=list)
    """Regular expressions to replace, in order, after the steps above (e.g. word-segmentation tags)."""
    boilerplate_lines: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    """A line matching any of these regular expressions is removed."""


DEFAULT_AD_PATTERNS = [
    r"(?i)\b(buy now|click here|free shipping|limited[- ]time offer|order now|call now)\b",
    r"(加|添加|\+)\s*(微信|vx|VX|QQ|qq)|(微信|QQ|qq)[号:：]\s*[A-Za-z0-9_-]{5,}",
    r"点击(购买|下载|进入|领取)|优惠券|包邮|限时(特价|抢购)|代开发票",
]


@dataclasses.dataclass
class FilterConfig:
    """Coarse, rule-based filtering. Word counts treat each Han character (and kana) as one word,
    since Chinese and Japanese are written without spaces; other words are runs of letters and
    digits. Every dropped document records the rule's name as its reason."""

    enabled: bool = True
    min_chars: int | None = None
    max_chars: int | None = 1_000_000
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    """Checked on documents whose words are mostly not Han characters (one character each)."""
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    """`#` and ellipses per word."""
    max_bullet_lines: float | None = 0.9
    """Fraction of lines starting with a bullet."""
    max_ellipsis_lines: float | None = 0.3
    """Fraction of lines ending in an ellipsis."""
    min_alpha_words: float | None = 0.8
    """Fraction of words containing at least one letter (Han characters are letters)."""
    min_stop_words: int | None = 2
    """Stop words (`the`, `of`, ... / `的`, `了`, ...) a document in English or Chinese must contain."""
    max_duplicate_lines: float | None = 0.3
    max_duplicate_line_chars: float | None = 0.2
    max_duplicate_paragraphs: float | None = 0.3
    max_duplicate_paragraph_chars: float | None = 0.2
    max_top_ngram_chars: dict[int, float] = dataclasses.field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """n -> largest share of characters the most frequent word n-gram may cover."""
    max_duplicate_ngram_chars: dict[int, float] = dataclasses.field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    """n -> largest share of characters that repeated word n-grams may cover."""
    languages: list[str] = dataclasses.field(default_factory=list)
    """Keep only documents in these languages (`zh`, `en`, `ja`, `ko`, `ru`, `ar`, ...); empty keeps all."""
    min_language_score: float = 0.5
    """Share of a document's letters written in its language's script."""
    banned_words: list[str] = dataclasses.field(default_factory=list)
    """A document containing any of these is dropped (whole words for Latin script, substrings for Chinese)."""
    banned_words_file: str | None = None
    """A file with one banned word per line, added to `banned_words`."""
    ad_patterns: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_AD_PATTERNS))
    """Regular expressions that mark a line as advertising."""
    max_ad_lines: float | None = 0.2
    """Largest fraction of lines that may match an ad pattern."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        **dict.fromkeys(("min_chars", "max_chars", "min_words", "max_words", "min_stop_words"), at_least(0)),
        **dict.fromkeys(("min_mean_word_length", "max_mean_word_length", "max_symbol_word_ratio"), at_least(0)),
        **dict.fromkeys(
            ("max_bullet_lines", "max_ellipsis_lines", "min_alpha_words", "max_duplicate_lines", "max_duplicate_line_chars",
             "max_duplicate_paragraphs", "max_duplicate_paragraph_chars", "min_language_score", "max_ad_lines"),
            between(0, 1),
        ),
        **dict.fromkeys(("max_top_ngram_chars", "max_duplicate_ngram_chars"), between(0, 1, keys=at_least(1))),
    }

    def __post_init__(self) -> None:
        check_fields(self, "--filters.{}")


@dataclasses.dataclass
class QualityConfig:
    """Fine filtering by a learned classifier (`lmforge quality train`)."""

    model: str | None = None
    min_quality: float = 0.5

    BOUNDS: ClassVar[dict[str, Bound]] = {"min_quality": between(0, 1)}

    def __post_init__(self) -> None:
        check_fields(self, lambda name: "--" + name.replace("_", "-"))  # --min-quality


@dataclasses.dataclass
class DedupConfig:
    """Exact and near-duplicate removal across all sources; the first document of a group is kept.

    Near duplicates use MinHash over word n-grams with LSH banding: two documents become candidates
    when all `rows` hashes of one of the `bands` agree, which happens with probability
    1 - (1 - J^rows)^bands for Jaccard similarity J (20 x 8: 0.98 at J = 0.8, 0.001 at J = 0.3).
    """

    exact: bool = True
    near: bool = True
    ngram: int = 5
    bands: int = 20
    rows: int = 8
    seed: int = 1
    max_documents_per_shard: int = 1 << 25
    """Bounds memory: a dedup shard sorts at most about this many (hash, index) pairs (16 bytes each)."""

    BOUNDS: ClassVar[dict[str, Bound]] = dict.fromkeys(("ngram", "bands", "rows", "max_documents_per_shard"), at_least(1))

    def __post_init__(self) -> None:
        check_fields(self, "--dedup.{}")


@dataclasses.dataclass
class MixConfig:
    """GPT-3 style mixing; weights and epochs may also be given per source in `sources`."""

    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """source name -> share of the training mixture (characters); sources are named by `--input NAME=PATH`."""
    epochs: dict[str, float] = dataclasses.field(default_factory=dict)
    """source name -> times each document is seen (fractions sample)."""
    total_chars: int | None = None
    """Size of the weighted mixture in characters; by default the size of the filtered corpus."""
    seed: int = 0

    BOUNDS: ClassVar[dict[str, Bound]] = {"weights": at_least(0), "epochs": at_least(0), "total_chars": at_least(1)}

    def __post_init__(self) -> None:
        check_fields(self, "--mix.{}")


@dataclasses.dataclass
class TokenizeConfig:
    """Tokenization into shards."""

    tokenizer: str | None = None
    vocab_size: int | None = None
    val_fraction: float = 0.005
    """Share of documents (chosen by a hash of their id) held out for validation."""
    shard_tokens: int = 100_000_000
    """Tokens per shard file at most (200 MB of uint16); documents are never split across shards."""
    sample_chars: int = 50_000_000
    """Characters of the cleaned, filtered corpus used to train a tokenizer with `vocab_size`."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "val_fraction": between(0, 1, high_open=True),
        "shard_tokens": at_least(1),
        "sample_chars": at_least(1),
    }

    def __post_init__(self) -> None:
        # Top-level options of `prepare`: --val-fraction, --shard-tokens, --tokenizer-sample-chars.
        check_fields(self, lambda name: "--" + {"sample_chars": "tokenizer_sample_chars"}.get(name, name).replace("_", "-"))
        if self.vocab_size is not None:
            from lmforge.tokenizer.train import DEFAULT_SPECIAL_TOKENS, check_vocab_size

            check_vocab_size(self.vocab_size, DEFAULT_SPECIAL_TOKENS)


@dataclasses.dataclass
class Recipe:
    """Everything `prepare` does, in one value: what the run's fingerprint and report are made of."""

    sources: list[Source]
    read: ReadConfig = dataclasses.field(default_factory=ReadConfig)
    clean: CleanConfig = dataclasses.field(default_factory=CleanConfig)
    filters: FilterConfig = dataclasses.field(default_factory=FilterConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    dedup: DedupConfig = dataclasses.field(default_factory=DedupConfig)
    mix: MixConfig = dataclasses.field(default_factory=MixConfig)
    tokenize: TokenizeConfig = dataclasses.field(default_factory=TokenizeConfig)
    on_bad_line: OnBadLine = "error"
