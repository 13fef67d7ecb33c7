"""A damaged, truncated or mislabelled compressed file is one error naming it, for every reader."""

import gzip
import re

import pytest

from lmforge.compressed import UnreadableFile, open_compressed, read_through
from lmforge.data.readers import read_paths
from lmforge.data.recipe import ReadConfig
from lmforge.errors import LmforgeError
from lmforge.retrieval.corpus import read_documents as bm25_documents
from lmforge.tokenizer.corpus import read_documents as tokenizer_documents

TEXT = "".join(f"line {number} of a document that compresses well enough\n" for number in range(2000))


def damaged(tmp_path):
    compressed = gzip.compress(TEXT.encode())
    middle = len(compressed) // 2
    files = {
        "plain.txt.gz": TEXT.encode(),
        "truncated.txt.gz": compressed[:middle],
        "corrupt.txt.gz": compressed[:middle] + bytes(64) + compressed[middle + 64 :],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_open_compressed_reads_by_suffix_and_names_a_damaged_file(tmp_path):
    (tmp_path / "good.txt.gz").write_bytes(gzip.compress(TEXT.encode()))
    with open_compressed(tmp_path / "good.txt.gz") as file:
        assert file.read().decode() == TEXT
    read_through(tmp_path / "good.txt.gz")
    for path in damaged(tmp_path):
        with pytest.raises(UnreadableFile, match=rf"^{re.escape(str(path))}: cannot read it \(.+\); it is damaged, truncated or not gzip"):
            with open_compressed(path) as file:
                file.read()
        with pytest.raises(UnreadableFile):
            read_through(path)


@pytest.mark.parametrize(
    "read",
    [
        lambda path: list(read_paths([str(path)], ReadConfig(unit="line"), "src")),
        lambda path: list(tokenizer_documents(path)),
        lambda path: list(bm25_documents([path])),
    ],
    ids=["prepare", "tokenizer", "bm25"],
)
def test_every_reader_reports_a_damaged_gzip_file_the_same_way(tmp_path, read):
    for path in damaged(tmp_path):
        with pytest.raises(LmforgeError, match=rf"^{re.escape(str(path))}: cannot read it"):
            read(path)
