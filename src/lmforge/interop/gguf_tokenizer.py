"""GGUF vocabularies ⇄ lmforge tokenizers, giving the token ids llama.cpp gives.

A GGUF file carries its tokenizer as `tokenizer.ggml.*` metadata. Two kinds serve causal LMs:

- `gpt2`: byte-level BPE: tokens in GPT-2's byte alphabet, ranked merges, and the pre-tokenizer
  named by `tokenizer.ggml.pre` — a sequence of Hugging Face `Split(..., "isolated")` steps over
  llama.cpp's regexes for that name (`gguf_pretokenizers`).
- `llama`: SentencePiece. llama.cpp repeatedly joins the adjacent pair whose concatenation is the
  highest-scoring token, and spells what never became a token as <0xNN> bytes. A BPE whose merges
  are every split of every token into two tokens, ranked by the joined token's score, with byte
  fallback, makes the same choices.

CONTROL (and UNKNOWN) tokens become special tokens, matched only where special tokens are allowed;
USER_DEFINED tokens are matched in any text, as llama.cpp matches them even with parse_special off.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import gguf
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from lmforge.errors import LmforgeError, warn
from lmforge.interop.gguf_pretokenizers import (
    ADD_BOS_BY_DEFAULT, END_OF_GENERATION, END_OF_TURN, FILL_IN_MIDDLE, IGNORE_MERGES, PRE_TOKENIZER_PATTERNS,
)
from lmforge.tokenizer.byte_level import GPT2_SPLIT_PATTERN
from lmforge.tokenizer.tokenizer import Tokenizer

Keys, TokenType = gguf.Keys.Tokenizer, gguf.TokenType
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
_SPACE = "▁"  # SentencePiece's visible space


@dataclass(frozen=True)
class GGUFVocabulary:
    """A tokenizer with what GGUF stores beside it: special ids, BOS/EOS flags, the chat template.

    `model` is "gpt2" (byte-level BPE) or "llama" (SentencePiece); `pre` is llama.cpp's
    pre-tokenizer name. `eog_ids` are the tokens that end generation in llama.cpp, eos first, then
    eot and the usual end-of-turn tokens.
    """

    tokenizer: Tokenizer
    model: str
    pre: str
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    eog_ids: tuple[int, ...] = ()

    def generation(self) -> dict:
        """What a checkpoint's generation.json keeps: stop ids, the BOS id when a prompt starts with
        one, the padding id, the chat template, and the pre-tokenizer name (for `write_vocabulary`)."""
        settings = {"stop_token_ids": list(self.eog_ids), "bos_token_id": self.bos_id if self.add_bos else None,
                    "pad_token_id": self.pad_id, "chat_template": self.chat_template or None, "gguf_tokenizer_pre": self.pre}
        return {key: value for key, value in settings.items() if value is not None}

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, generation: dict | None = None,
                       source: str | os.PathLike | None = None) -> GGUFVocabulary:
        """Describe a checkpoint's tokenizer for GGUF: its kind, pre-tokenizer name, special ids, flags.

        `generation` (generation.json) gives the stop ids (eos first), the chat template, the padding
        id and the pre-tokenizer name a GGUF file came with, and decides BOS as `lmforge generate`
        does: a `bos_token_id` means prompts start with it. Without it, BOS comes from the
        tokenizer's post-processor. The pre-tokenizer name otherwise is the one whose llama.cpp
        regexes equal the tokenizer's split patterns ("gpt-2" for lmforge's own tokenizers).
        """
        prefix = f"{source}: " if source is not None else ""
        spec = json.loads(tokenizer.backend.to_str())
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise LmforgeError(f"{prefix}a {model.get('type')} tokenizer cannot be written to GGUF; "
                               "llama.cpp reads byte-level BPE and SentencePiece-style BPE tokenizers")
        settings = generation or {}
        ids = [settings.get("bos_token_id"), settings.get("pad_token_id"), *(settings.get("stop_token_ids") or [])]
        if not all(token_id is None or type(token_id) is int and 0 <= token_id < tokenizer.vocab_size for token_id in ids):
            raise LmforgeError(f"{prefix}generation.json names token ids outside the {tokenizer.vocab_size:,}-token "
                               "vocabulary (bos_token_id, pad_token_id, stop_token_ids)")
        pre = settings.get("gguf_tokenizer_pre")
        patterns = _split_patterns(spec, prefix)
        if patterns is not None:
            kind, pre = "gpt2", _pre_name(patterns, bool(model.get("ignore_merges")), pre, prefix)
        elif model.get("byte_fallback") and _space_prefix(spec) is not None:
            kind, pre = "llama", pre or "default"
        else:
            raise LmforgeError(f"{prefix}this tokenizer is neither byte-level BPE nor SentencePiece-style BPE (byte "
                               f"fallback, '{_SPACE}' for spaces), so llama.cpp could not reproduce its ids from GGUF")
        template_bos, template_eos = _template_marks(spec)
        if generation is None:
            bos_id, add_bos, stops = template_bos, template_bos is not None, [tokenizer.eos_id]
        else:
            bos_id = generation.get("bos_token_id")
            add_bos, stops = bos_id is not None, list(generation.get("stop_token_ids") or [tokenizer.eos_id])
        stops = [token_id for token_id in stops if token_id is not None]
        eos_id = stops[0] if stops else None
        if bos_id is None and kind == "gpt2":
            bos_id = eos_id  # GPT-2's convention; llama.cpp would otherwise take id 11 for BOS
        unk = model.get("unk_token")
        return cls(tokenizer, kind, pre, bos_id=bos_id, eos_id=eos_id, eot_id=next(iter(stops[1:]), None),
                   unk_id=None if unk is None else tokenizer.token_to_id(unk),
                   pad_id=settings.get("pad_token_id"), add_bos=add_bos, add_eos=template_eos is not None,
                   chat_template=settings.get("chat_template"), eog_ids=tuple(dict.fromkeys(stops)))


class _Metadata:
    """A GGUF file's fields, read with the file and the field named in every error."""

    def __init__(self, reader: gguf.GGUFReader, source: str) -> None:
        self.reader, self.source = reader, source

    def get(self, key: str, default=None):
        field = self.reader.get_field(key)
        if field is None:
            return default
        try:
            return field.contents()
        except UnicodeDecodeError:
            raise LmforgeError(f"{self.source}: {key} holds text that is not UTF-8; the file is corrupt") from None

    def array(self, key: str, length: int | None, needed_because: str | None = None) -> list | None:
        value = self.get(key)
        if value is None:
            if needed_because:
                raise LmforgeError(f"{self.source}: {key} is missing; {needed_because}")
            return None
        if not isinstance(value, list) or not value:
            raise LmforgeError(f"{self.source}: {key} is {'empty' if value == [] else 'not an array'}; the file is corrupt")
        if length is not None and len(value) != length:
            raise LmforgeError(f"{self.source}: {key} has {len(value):,} entries for {length:,} tokens; the file is corrupt")
        return value

    def token_id(self, key: str, n_tokens: int, default: int | None) -> int | None:
        token_id = self.get(key)
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < n_tokens):
            warn(f"{self.source}: {key} = {token_id} is outside the {n_tokens:,}-token vocabulary; ignored")
            token_id = None
        if token_id is None and default is not None and default < n_tokens:
            return default
        return token_id


def read_vocabulary(reader: gguf.GGUFReader, source: str | os.PathLike | None = None) -> GGUFVocabulary:
    """The tokenizer in a GGUF file's metadata, giving llama.cpp's ids, with its special ids and template.

    `source` names the file in error messages (default: the file the reader opened).
    """
    source = str(source if source is not None else getattr(reader.data, "filename", "GGUF file"))
    meta = _Metadata(reader, source)
    model = meta.get(Keys.MODEL)
    if model is None:
        raise LmforgeError(f"{source}: {Keys.MODEL} is missing; this GGUF file carries no tokenizer")
    if model not in ("gpt2", "llama"):
        raise LmforgeError(f"{source}: {Keys.MODEL} is {model!r}; lmforge reads the tokenizers of causal language "
                           "models: 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)")
    tokens = meta.array(Keys.LIST, None, "the file carries no vocabulary")
    tokens = [token or f"[EMPTY_{token_id}]" for token_id, token in enumerate(tokens)]  # llama.cpp's name for ""
    n_tokens = len(tokens)
    token_ids = {token: token_id for token_id, token in enumerate(tokens)}
    if len(token_ids) != n_tokens:
        twice = next(token for token_id, token in enumerate(tokens) if token_ids[token] != token_id)
        raise LmforgeError(f"{source}: {Keys.LIST} holds {twice!r} twice; llama.cpp refuses such a vocabulary too")
    types = meta.array(Keys.TOKEN_TYPE, n_tokens) or [TokenType.NORMAL] * n_tokens
    pre = meta.get(Keys.PRE)
    if model == "gpt2":
        if pre is None:
            warn(f"{source}: {Keys.PRE} is missing; using llama.cpp's 'default' pre-tokenizer, which may not be the "
                 "model's own (convert the model again with a current llama.cpp)")
            pre = "default"
        if pre not in PRE_TOKENIZER_PATTERNS:
            raise LmforgeError(f"{source}: {Keys.PRE} is {pre!r}, a pre-tokenizer lmforge does not know; "
                               f"known: {', '.join(sorted(PRE_TOKENIZER_PATTERNS))}")
        merges = meta.array(Keys.MERGES, None, "a gpt2 (BPE) vocabulary needs its merges")
        add_bos, defaults = pre in ADD_BOS_BY_DEFAULT, {}
    else:
        scores = meta.array(Keys.SCORES, n_tokens, "a llama (SentencePiece) vocabulary needs its token scores")
        pre, add_bos, defaults = pre or "default", True, {"bos": 1, "eos": 2, "unk": 0}  # llama.cpp's SPM defaults
    ids = {name: meta.token_id(key, n_tokens, defaults.get(name)) for name, key in
           (("bos", Keys.BOS_ID), ("eos", Keys.EOS_ID), ("eot", Keys.EOT_ID), ("eom", Keys.EOM_ID),
            ("unk", Keys.UNK_ID), ("pad", Keys.PAD_ID))}
    if ids["eot"] is None:
        ids["eot"] = next((token_ids[text] for text in END_OF_TURN if text in token_ids), None)
    add_bos = bool(meta.get(Keys.ADD_BOS, add_bos)) and ids["bos"] is not None
    add_eos = bool(meta.get(Keys.ADD_EOS, False)) and ids["eos"] is not None

    if model == "gpt2":
        backend = _byte_level_backend(tokens, token_ids, merges, pre, source)
    else:
        unk = tokens[ids["unk"]] if ids["unk"] is not None else None
        backend = _sentencepiece_backend(tokens, token_ids, scores, unk, add_space_prefix=bool(meta.get(Keys.ADD_PREFIX, True)))
    phi3 = any(name in str(meta.get(gguf.Keys.General.NAME, "")).lower() for name in ("phi-3", "phi3"))
    backend.add_tokens(_added_tokens(tokens, types, token_ids, rstrip=phi3))
    if add_bos or add_eos:
        backend.post_processor = _bos_eos_processor(tokens, ids["bos"] if add_bos else None, ids["eos"] if add_eos else None)
    eog = [ids[name] for name in ("eos", "eot", "eom") if ids[name] is not None]
    eog += [token_ids[text] for text in END_OF_GENERATION if text in token_ids]
    eos = tokens[ids["eos"]] if ids["eos"] is not None else None
    return GGUFVocabulary(Tokenizer(backend, eos_token=eos), model, pre, bos_id=ids["bos"], eos_id=ids["eos"],
                          eot_id=ids["eot"], unk_id=ids["unk"], pad_id=ids["pad"], add_bos=add_bos, add_eos=add_eos,
                          chat_template=meta.get(Keys.CHAT_TEMPLATE), eog_ids=tuple(dict.fromkeys(eog)))


def _byte_level_backend(tokens: list[str], vocab: dict[str, int], merges: list[str], pre: str, source: str) -> HFTokenizer:
    pairs = []
    for index, merge in enumerate(merges):
        cut = merge.find(" ", 1)  # llama.cpp's rule: the first space after the first character
        left, right = (merge[:cut], merge[cut + 1:]) if cut > 0 else (merge, "")
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise LmforgeError(f"{source}: {Keys.MERGES}[{index}] = {merge!r} does not join two tokens into a third; "
                               "the file is corrupt")
        pairs.append((left, right))
    backend = HFTokenizer(models.BPE(vocab, pairs, ignore_merges=pre in IGNORE_MERGES))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in PRE_TOKENIZER_PATTERNS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_backend(tokens: list[str], vocab: dict[str, int], scores: list[float], unk: str | None, *,
                           add_space_prefix: bool) -> HFTokenizer:
    """llama.cpp's SentencePiece tokenizer as a BPE: every two-token split of a token is a merge,
    ranked by that token's score (ties: lower id first); text that is no token falls back to bytes."""
    ranked = [(-scores[token_id], token_id, cut) for token_id, token in enumerate(tokens)
              for cut in range(1, len(token)) if token[:cut] in vocab and token[cut:] in vocab]
    ranked.sort()
    merges = [(tokens[token_id][:cut], tokens[token_id][cut:]) for _, token_id, cut in ranked]
    backend = HFTokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token=unk, fuse_unk=True))
    # llama.cpp writes spaces as ▁ and, with add_space_prefix, puts one before every run of text
    # (its start, and after each special token): Prepend acts on each piece between added tokens too.
    escape = normalizers.Replace(" ", _SPACE)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), escape]) if add_space_prefix else escape
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if add_space_prefix else steps)
    return backend


def _added_tokens(tokens: list[str], types: list[int], token_ids: dict[str, int], *, rstrip: bool) -> list[AddedToken]:
    """CONTROL and UNKNOWN tokens as special tokens, USER_DEFINED ones as tokens matched in any text,
    after llama.cpp's promotions (end-of-turn and fill-in-middle texts are CONTROL whatever their type).
    `rstrip`: llama.cpp drops the whitespace after Phi-3's special tokens (but not after <unk>, <s>,
    <|endoftext|>)."""
    types = list(types)
    for text in (*END_OF_GENERATION, *END_OF_TURN, *FILL_IN_MIDDLE):
        if text in token_ids:
            types[token_ids[text]] = TokenType.CONTROL
    keeps_space = {"<unk>", "<s>", "<|endoftext|>"}
    return [AddedToken(tokens[token_id], special=kind != TokenType.USER_DEFINED, normalized=False,
                       rstrip=rstrip and tokens[token_id] not in keeps_space)
            for token_id, kind in enumerate(types) if kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED)]


def _bos_eos_processor(tokens: list[str], bos_id: int | None, eos_id: int | None) -> processors.TemplateProcessing:
    """BOS/EOS around a text for Hugging Face users who ask for special tokens (lmforge's encode
    never does); it also keeps the add-BOS flag in tokenizer.json, where `from_tokenizer` finds it."""
    bos = [tokens[bos_id]] if bos_id is not None else []
    eos = [tokens[eos_id]] if eos_id is not None else []
    second = [f"{token}:1" for token in bos] + ["$B:1"] + [f"{token}:1" for token in eos]
    marks = {tokens[token_id]: token_id for token_id in (bos_id, eos_id) if token_id is not None}
    return processors.TemplateProcessing(single=[*bos, "$A", *eos], pair=[*bos, "$A", *eos, *second],
                                         special_tokens=list(marks.items()))


def _steps(component: dict | None, key: str) -> list[dict]:
    """The steps of a tokenizer.json normalizer or pre-tokenizer, a Sequence flattened."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [step for inner in component[key] for step in _steps(inner, key)]
    return [component]


def _split_patterns(spec: dict, prefix: str) -> tuple[str, ...] | None:
    """The split regexes of a byte-level tokenizer.json, in order; None when it is not byte-level."""
    steps = _steps(spec.get("pre_tokenizer"), "pretokenizers")
    if not any(step.get("type") == "ByteLevel" for step in steps):
        return None
    patterns = []
    for step in steps:
        if step.get("type") == "Split" and step.get("behavior") == "Isolated" and "Regex" in step.get("pattern", {}) \
                and not step.get("invert"):
            patterns.append(step["pattern"]["Regex"])
        elif step.get("type") == "ByteLevel" and not step.get("add_prefix_space"):
            patterns += [GPT2_SPLIT_PATTERN] if step.get("use_regex", True) else []
        else:
            raise LmforgeError(f"{prefix}the pre-tokenizer step {json.dumps(step)[:80]} has no llama.cpp equivalent, so this "
                               "tokenizer cannot be written to GGUF")
    return tuple(patterns)


def _pre_name(patterns: tuple[str, ...], ignore_merges: bool, pre: str | None, prefix: str) -> str:
    """llama.cpp's name for a byte-level tokenizer's split regexes; `pre`, when given, must fit them."""
    if pre is not None:
        if PRE_TOKENIZER_PATTERNS.get(pre) != patterns:
            raise LmforgeError(f"{prefix}pre-tokenizer {pre!r} (gguf_tokenizer_pre in generation.json) does not split "
                               "text as this tokenizer does; remove it to have the name found from the tokenizer")
        return pre
    names = [name for name, known in PRE_TOKENIZER_PATTERNS.items() if known == patterns]
    if not names:
        raise LmforgeError(f"{prefix}this tokenizer's split patterns are none of llama.cpp's pre-tokenizers, so "
                           "llama.cpp could not reproduce its ids from GGUF")
    return next((name for name in names if (name in IGNORE_MERGES) == ignore_merges), names[0])


def _space_prefix(spec: dict) -> bool | None:
    """For a SentencePiece-style tokenizer.json (spaces written as ▁), whether it puts ▁ before the
    text; None when spaces are not written as ▁."""
    steps = _steps(spec.get("normalizer"), "normalizers")
    if any(step.get("type") == "Replace" and step.get("pattern") == {"String": " "} and step.get("content") == _SPACE
           for step in steps):
        return any(step.get("type") == "Prepend" and step.get("prepend") == _SPACE for step in steps)
    metaspace = [step for step in _steps(spec.get("pre_tokenizer"), "pretokenizers") if step.get("type") == "Metaspace"]
    if metaspace and metaspace[0].get("replacement") == _SPACE:
        return metaspace[0].get("prepend_scheme", "always") != "never"
    return None


def _template_marks(spec: dict) -> tuple[int | None, int | None]:
    """The ids a TemplateProcessing post-processor puts before and after a single text (BOS, EOS)."""
    processor = spec.get("post_processor") or {}
    if processor.get("type") != "TemplateProcessing":
        return None, None
    pieces = processor.get("single", [])
    text_at = next((index for index, piece in enumerate(pieces) if "Sequence" in piece), 0)

    def mark(piece_list: list[dict]) -> int | None:
        specials = [piece["SpecialToken"]["id"] for piece in piece_list if "SpecialToken" in piece]
        return processor["special_tokens"][specials[0]]["ids"][0] if specials else None

    return mark(pieces[:text_at]), mark(pieces[text_at + 1:])


def write_vocabulary(writer: gguf.GGUFWriter, tokenizer: Tokenizer, generation: dict | None = None,
                     source: str | os.PathLike | None = None) -> GGUFVocabulary:
    """Add a checkpoint's tokenizer (and generation.json's stop ids, BOS and chat template, see
    `GGUFVocabulary.from_tokenizer`) to a GGUF file being written; returns what was written.

    SentencePiece scores are written as minus each token's merge rank: llama.cpp then joins pairs
    in exactly the order this tokenizer does (a GGUF file's original scores are not kept).
    """
    vocabulary = GGUFVocabulary.from_tokenizer(tokenizer, generation, source)
    spec = json.loads(vocabulary.tokenizer.backend.to_str())
    model = spec["model"]
    size = vocabulary.tokenizer.vocab_size
    tokens: list[str | None] = [None] * size
    types = [TokenType.NORMAL] * size
    for token, token_id in model["vocab"].items():
        tokens[token_id] = token
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added["special"] else TokenType.USER_DEFINED
    for token_id, token in enumerate(tokens):
        if token is None:  # a hole in the ids: llama.cpp needs every id to name a token
            tokens[token_id], types[token_id] = f"[PAD{token_id}]", TokenType.UNUSED
    # tokenizer.json writes a merge as "left right" (tokenizers < 0.20) or ["left", "right"].
    merges = [merge.split(" ", 1) if isinstance(merge, str) else merge for merge in model.get("merges", [])]

    if vocabulary.model == "llama":
        for token_id, token in enumerate(tokens):
            if types[token_id] == TokenType.NORMAL and _BYTE_TOKEN.fullmatch(token):
                types[token_id] = TokenType.BYTE
        if vocabulary.unk_id is not None:
            types[vocabulary.unk_id] = TokenType.UNKNOWN

    writer.add_tokenizer_model(vocabulary.model)
    writer.add_tokenizer_pre(vocabulary.pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if vocabulary.model == "llama":
        first_rank: dict[str, int] = {}
        for rank, (left, right) in enumerate(merges):
            first_rank.setdefault(left + right, rank)
        writer.add_token_scores([-float(first_rank.get(token, len(merges))) for token in tokens])
        writer.add_add_space_prefix(bool(_space_prefix(spec)))
    else:
        writer.add_token_merges([f"{left} {right}" for left, right in merges])
    for token_id, add in ((vocabulary.bos_id, writer.add_bos_token_id), (vocabulary.eos_id, writer.add_eos_token_id),
                          (vocabulary.eot_id, writer.add_eot_token_id), (vocabulary.unk_id, writer.add_unk_token_id),
                          (vocabulary.pad_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(vocabulary.add_bos and vocabulary.bos_id is not None)
    writer.add_add_eos_token(vocabulary.add_eos and vocabulary.eos_id is not None)
    if vocabulary.chat_template:
        writer.add_chat_template(vocabulary.chat_template)
    return vocabulary
