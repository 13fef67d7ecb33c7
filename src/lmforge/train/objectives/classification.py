"""Sequence classification: a linear head on the hidden state of each row's last real token.

A decoder's last token is the only one that has attended to the whole text, so its final-norm
state is the text's summary (as in GPT-1's fine-tuning and Hugging Face's
`*ForSequenceClassification`). Rows are right-padded and `batch["last"]` says where each row's
last real token is; causal attention never lets a later (padding) token change an earlier
state, so a text gets the same prediction alone or in any batch.

The head is `model.classifier`, a submodule, so the optimizer, DDP, FSDP2 and checkpoints of
training see it; a finished fine-tune keeps it beside the base checkpoint as classifier.safetensors +
classifier.json, leaving model.safetensors a plain checkpoint every other command reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.atomic import atomic_file, atomic_write_text
from lmforge.errors import LmforgeError
from lmforge.eval.classification_metrics import accuracy, confusion_matrix, macro_f1
from lmforge.model.checkpoint_directory import model_state, read_config, write_checkpoint
from lmforge.model.transformer import Transformer
from lmforge.train.job import Batches
from lmforge.train.objectives import Batch

HEAD_FORMAT = "lmforge.classifier.v1"
HEAD_WEIGHTS_FILE = "classifier.safetensors"
HEAD_CONFIG_FILE = "classifier.json"
POOLING = "last-token"
HEAD_NAME = "classifier"  # the head's submodule name: its parameters are classifier.weight, classifier.bias
FINETUNE_HINT = "run lmforge finetune --task classify"

Trainable = Literal["head", "last-k-blocks", "all"]


class ClassificationHead(nn.Module):
    """logits [batch, n_labels] = W · hidden[row, last[row]] + b, computed in fp32.

    Zero-initialised: the first predictions are uniform (the loss starts at exactly log n_labels),
    and with a trainable base the first gradients reaching the base (Wᵀ(p − y)) are zero, so a
    random head cannot scramble pretrained features before it has learned anything.
    """

    runs_after_forward = True  # called on the model's output: FSDP2 shards it as its own unit (distributed/data_parallel.py)

    def __init__(self, d_model: int, n_labels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_labels, d_model))
        self.bias = nn.Parameter(torch.zeros(n_labels))

    @property
    def n_labels(self) -> int:
        return self.weight.shape[0]

    def forward(self, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]
        # Outside autocast: the head is tiny, and bf16 logits would round the probabilities it reports.
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(pooled.float(), self.weight.float(), self.bias.float())


def attach_head(model: Transformer, labels: Sequence[str]) -> ClassificationHead:
    """A new head for `labels` registered as `model.classifier`, on the model's device; the base
    parameters keep their names."""
    head = ClassificationHead(model.config.d_model, len(labels)).to(model.token_embedding.weight.device)
    setattr(model, HEAD_NAME, head)
    return head


def _head_of(model: Transformer) -> ClassificationHead:
    head = getattr(model, HEAD_NAME, None)
    if not isinstance(head, ClassificationHead):
        raise ValueError("the model has no classification head: call attach_head first")
    return head


def select_trainable(model: Transformer, trainable: Trainable, k: int = 2) -> None:
    """Set requires_grad for classification fine-tuning: the head alone (a linear probe), the head
    with the last `k` blocks and the final norm, or all parameters. "all" leaves out an untied
    output layer: classification never uses it, so it would get no gradient (and DDP would wait
    for one)."""
    head = _head_of(model)
    if trainable not in ("head", "last-k-blocks", "all"):
        raise LmforgeError(f"trainable {trainable!r}: choose head, last-k-blocks or all")
    if trainable == "last-k-blocks" and not 1 <= k <= len(model.blocks):
        raise LmforgeError(f"trainable blocks k={k}: last-k-blocks needs 1 ≤ k ≤ {len(model.blocks)} (the model's layers)")
    model.requires_grad_(trainable == "all")
    if trainable == "all" and not model.config.tie_embeddings:
        model.lm_head.requires_grad_(False)
    if trainable == "last-k-blocks":
        for block in model.blocks[-k:]:
            block.requires_grad_(True)
        model.norm.requires_grad_(True)
    head.requires_grad_(True)


@dataclass
class Classification:
    """Summed cross-entropy of the head's logits against each row's label; one item a row."""

    head: ClassificationHead

    def count(self, batch: Batch) -> int:
        return int(batch["labels"].numel())

    def loss(self, model: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        logits = self.head(model(batch["inputs"], hidden_states=True), batch["last"])
        return F.cross_entropy(logits, batch["labels"].to(logits.device), reduction="sum")


def padded_batches(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """`inputs` right-padded with `pad_id` and `last`, for `batch_size` rows of token ids at a time, in order."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        inputs = torch.full((len(chunk), max(len(ids) for ids in chunk)), pad_id, dtype=torch.long)
        for index, ids in enumerate(chunk):
            inputs[index, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        yield {"inputs": inputs, "last": torch.tensor([len(ids) - 1 for ids in chunk], dtype=torch.long)}


@torch.no_grad()
def predict(model: Transformer, head: ClassificationHead, batches: Iterable[Batch]) -> torch.Tensor:
    """Probabilities [rows, n_labels] (fp32, on the CPU) of every row of `batches`, in order, with
    dropout off; the model's and head's training modes are restored afterwards."""
    modes = [(module, module.training) for module in (model, head)]
    model.eval()
    head.eval()
    device = head.weight.device
    try:
        probabilities = [
            head(model(batch["inputs"].to(device), hidden_states=True), batch["last"]).softmax(dim=-1).cpu()
            for batch in batches
        ]
    finally:
        for module, training in modes:
            module.train(training)
    return torch.cat(probabilities) if probabilities else torch.empty(0, head.n_labels)


def validation_figures(model: Transformer, head: ClassificationHead, batches: Batches, n_batches: int,
                       batch_size: int = 8) -> dict:
    """val_accuracy, val_macro_f1 and val_confusion (rows: true label, columns: predicted) over the
    first min(n_batches × batch_size, len(batches)) rows of the source, always the same ones (read
    from its start); its position is restored afterwards, so training data order is untouched."""
    saved = batches.state_dict()
    batches.load_state_dict({**saved, "epoch": 0, "position": 0})
    remaining = min(n_batches * batch_size, len(batches))
    read = []
    try:
        while remaining > 0:
            read.append(batches.next_batch(min(batch_size, remaining)))
            remaining -= len(read[-1]["labels"])
    finally:
        batches.load_state_dict(saved)
    truth = torch.cat([batch["labels"] for batch in read]).tolist()
    predicted = predict(model, head, read).argmax(dim=-1).tolist()
    return {"val_accuracy": accuracy(truth, predicted), "val_macro_f1": macro_f1(truth, predicted),
            "val_confusion": confusion_matrix(truth, predicted, head.n_labels)}


def save_head(head: ClassificationHead, labels: Sequence[str], directory: str | Path) -> None:
    """classifier.safetensors, then classifier.json (written last: its presence means both are complete)."""
    if len(labels) != head.n_labels:
        raise ValueError(f"{len(labels)} labels for a head of {head.n_labels} outputs")
    directory = Path(directory)
    write_head_files(head, directory / HEAD_WEIGHTS_FILE, directory / HEAD_CONFIG_FILE,
                     {"format": HEAD_FORMAT, "labels": list(labels), "pooling": POOLING})


def write_head_files(head: ClassificationHead, weights_path: Path, config_path: Path, config: dict) -> None:
    """A head's tensors (fp32), then its JSON config (last: its presence means both are complete);
    `config["format"]` is also the safetensors metadata."""
    from safetensors.torch import save_file

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": head.weight.detach().float().contiguous().cpu(), "bias": head.bias.detach().float().contiguous().cpu()}
    with atomic_file(weights_path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": config["format"]})
    atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _read_labels(path: Path) -> list[str]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LmforgeError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LmforgeError(f"{path}: unreadable ({error}); {FINETUNE_HINT} again") from None
    if not isinstance(config, dict) or config.get("format") != HEAD_FORMAT:
        raise LmforgeError(f"{path}: not a classifier config (format should be {HEAD_FORMAT!r}); {FINETUNE_HINT} again")
    if config.get("pooling") != POOLING:
        raise LmforgeError(f"{path}: pooling {config.get('pooling')!r} is not supported (only {POOLING!r})")
    labels = config.get("labels")
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels)
            or len(set(labels)) != len(labels)):
        raise LmforgeError(f"{path}: field labels must be a list of at least two distinct strings")
    return labels


def load_head(directory: str | Path, d_model: int) -> tuple[ClassificationHead, list[str]]:
    """The head and its labels from a classification fine-tune's directory (on the CPU, fp32)."""
    directory = Path(directory)
    config_path, weights_path = directory / HEAD_CONFIG_FILE, directory / HEAD_WEIGHTS_FILE
    if not config_path.is_file():
        raise LmforgeError(f"{directory}: not a classification fine-tune (no {HEAD_CONFIG_FILE}); {FINETUNE_HINT}")
    labels = _read_labels(config_path)
    if not weights_path.is_file():
        raise LmforgeError(f"{weights_path}: missing, though {HEAD_CONFIG_FILE} is there; {FINETUNE_HINT} again")
    return read_head(weights_path, len(labels), d_model, f"{len(labels)} labels"), labels


def read_head(weights_path: Path, outputs: int, d_model: int, what: str) -> ClassificationHead:
    """A head of `outputs` × `d_model` from its safetensors file (on the CPU, fp32), checked for
    shape (`what` names where `outputs` comes from) and for NaN/inf."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise LmforgeError(f"{weights_path}: unreadable safetensors file, truncated or corrupt ({error})") from None
    expected = {"weight": (outputs, d_model), "bias": (outputs,)}
    for name, shape in expected.items():
        tensor = tensors.get(name)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else f"of shape {tuple(tensor.shape)}"
            raise LmforgeError(f"{weights_path}: tensor {name} is {found}; {what} and d_model {d_model} "
                               f"imply {shape} (the head belongs to another model?)")
        if not bool(tensor.isfinite().all()):
            raise LmforgeError(f"{weights_path}: tensor {name} holds NaN/inf (a run that diverged?); use an earlier fine-tune")
    head = ClassificationHead(d_model, outputs)
    head.load_state_dict({name: tensors[name].float() for name in expected})
    return head


def base_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's checkpoint state without its head: what model.safetensors holds."""
    return {name: tensor for name, tensor in model_state(model).items() if not name.startswith(f"{HEAD_NAME}.")}


def save_classification_checkpoint(model: Transformer, labels: Sequence[str], directory: str | Path,
                                   tokenizer: str | Path | None = None, generation: dict | None = None) -> None:
    """The head's files, then the base checkpoint (config.json last), so a directory that looks
    finished has its classifier."""
    save_head(_head_of(model), labels, directory)
    write_checkpoint(model.config, base_state(model), directory, tokenizer, generation)


def load_classification_checkpoint(directory: str | Path, device: torch.device | str = "cpu",
                                   dtype: torch.dtype | None = None) -> tuple[Transformer, ClassificationHead, list[str]]:
    """The model of a classification fine-tune with its head attached (the head stays fp32), and its labels."""
    from lmforge.peft import load_finetuned

    directory = Path(directory)
    head, labels = load_head(directory, read_config(directory).d_model)
    model = load_finetuned(directory, device, dtype)
    setattr(model, HEAD_NAME, head.to(device))
    return model, head, labels
