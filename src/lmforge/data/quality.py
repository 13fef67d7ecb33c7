"""The learned quality classifier: fine filtering after the rules.

Like GPT-3's filter (a logistic regression over hashed features, trained to tell curated text from
raw crawl), it is a linear model on hashed word unigrams, word bigrams and character trigrams.
Because each Han character is a word (`words.py`), unigrams and bigrams are Chinese character
n-grams, so the same features work for Chinese and English without a segmenter. A linear model
is fast enough to score every document of a corpus on a CPU and its weights can be inspected;
it is fitted with L-BFGS on a sparse matrix, with L2 regularisation and balanced class weights.

The model file is safetensors (weights) with JSON metadata (settings and held-out metrics):
never pickle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lmforge.data.document import Document
from lmforge.data.step import FilterStep
from lmforge.data.words import code_points, mix64, ngram_hashes, words_of
from lmforge.errors import LmforgeError

MODEL_FORMAT = "lmforge.quality.v1"
# Salts that keep the three feature families apart in the one hashed space.
UNIGRAM, BIGRAM, TRIGRAM = np.uint64(0x51ED27), np.uint64(0xB16A3), np.uint64(0x7C3A9)


def feature_indices(document: Document, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices, values) of one document's hashed features: log(1 + count), L2-normalised."""
    hashes = words_of(document).hashes
    points = code_points(document.text.lower()).astype(np.uint64)
    with np.errstate(over="ignore"):
        trigrams = points[:-2] * np.uint64(0x9E3779B1) + points[1:-1] * np.uint64(0x85EBCA77) + points[2:]
    parts = [mix64(hashes ^ UNIGRAM), mix64(ngram_hashes(hashes, 2) ^ BIGRAM) if len(hashes) > 1 else hashes[:0]]
    parts.append(mix64(trigrams ^ TRIGRAM))
    buckets, counts = np.unique(np.concatenate(parts) % np.uint64(dimensions), return_counts=True)
    values = np.log1p(counts.astype(np.float32))
    norm = float(np.linalg.norm(values)) or 1.0
    return buckets.astype(np.int64), values / norm


def feature_matrix(documents: list[Document], dimensions: int):
    import scipy.sparse

    rows, columns, values = [], [], []
    for row, document in enumerate(documents):
        indices, weights = feature_indices(document, dimensions)
        rows.append(np.full(len(indices), row, dtype=np.int64))
        columns.append(indices)
        values.append(weights)
    if not documents:
        return scipy.sparse.csr_matrix((0, dimensions), dtype=np.float32)
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=(len(documents), dimensions)
    )


@dataclasses.dataclass
class QualityModel:
    """p(good | text) = sigmoid(weights · features + bias)."""

    weights: np.ndarray
    bias: float
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def dimensions(self) -> int:
        return len(self.weights)

    def score(self, document: Document) -> float:
        indices, values = feature_indices(document, self.dimensions)
        logit = float(values @ self.weights[indices]) + self.bias
        return float(1.0 / (1.0 + np.exp(-logit)))

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        from lmforge.atomic import atomic_file

        metadata = {"format": MODEL_FORMAT, "dimensions": str(self.dimensions), "metrics": json.dumps(self.metrics)}
        with atomic_file(path) as temporary:
            save_file({"weights": self.weights.astype(np.float32), "bias": np.array([self.bias], dtype=np.float32)}, str(temporary), metadata)

    @classmethod
    def load(cls, path: str | Path) -> QualityModel:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LmforgeError(f"quality model {path} does not exist; train one with `lmforge quality train`")
        try:
            with safe_open(str(path), framework="numpy") as file:
                metadata = file.metadata() or {}
                weights, bias = file.get_tensor("weights"), float(file.get_tensor("bias")[0])
        except Exception as error:  # safetensors raises its own error types for a foreign file
            raise LmforgeError(f"quality model {path} is not a safetensors file written by `lmforge quality train` ({error})") from None
        if metadata.get("format") != MODEL_FORMAT:
            raise LmforgeError(f"quality model {path} has format {metadata.get('format')!r}, expected {MODEL_FORMAT!r}; retrain it")
        return cls(weights=weights, bias=bias, metrics=json.loads(metadata.get("metrics", "{}")))


def fit(documents: list[Document], labels: np.ndarray, dimensions: int = 1 << 18, l2: float = 1e-4, max_iterations: int = 200) -> QualityModel:
    """Logistic regression with balanced class weights: minimise the weighted mean log loss plus
    l2/2 |w|^2 by L-BFGS (scipy), from zero weights, so the result is deterministic."""
    from scipy.optimize import minimize

    features = feature_matrix(documents, dimensions)
    labels = labels.astype(np.float64)
    positives = labels.sum()
    if positives == 0 or positives == len(labels):
        raise LmforgeError("quality train needs both positive and negative examples; one of --positive/--negative yielded no documents")
    sample_weights = np.where(labels == 1, len(labels) / (2 * positives), len(labels) / (2 * (len(labels) - positives)))
    sample_weights /= sample_weights.sum()

    def loss_and_gradient(parameters: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = parameters[:-1], parameters[-1]
        logits = features @ weights + bias
        # log(1 + e^z) - y z, computed stably
        losses = np.logaddexp(0.0, logits) - labels * logits
        errors = sample_weights * (1.0 / (1.0 + np.exp(-logits)) - labels)
        gradient = np.append(features.T @ errors + l2 * weights, errors.sum())
        return float(sample_weights @ losses + 0.5 * l2 * weights @ weights), gradient

    result = minimize(loss_and_gradient, np.zeros(dimensions + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iterations})
    return QualityModel(weights=result.x[:-1].astype(np.float32), bias=float(result.x[-1]))


def evaluate(model: QualityModel, documents: list[Document], labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of `score >= threshold` against the labels."""
    predicted = np.array([model.score(document) >= threshold for document in documents], dtype=bool)
    actual = labels.astype(bool)
    true_positives = int((predicted & actual).sum())
    precision = true_positives / max(int(predicted.sum()), 1)
    recall = true_positives / max(int(actual.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((predicted == actual).mean()) if len(actual) else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy, "examples": len(actual)}


class QualityStep(FilterStep):
    """Scores each document (`meta["quality"]`) and drops those below `min_quality` (`min_quality`)."""

    name = "quality_model"

    def __init__(self, model: QualityModel, min_quality: float):
        super().__init__()
        self.model = model
        self.min_quality = min_quality

    def reject(self, document: Document) -> str | None:
        score = self.model.score(document)
        document.meta["quality"] = round(score, 4)
        return "min_quality" if score < self.min_quality else None


def train_classifier(
    positives: list[Document], negatives: list[Document], *, val_fraction: float = 0.2, dimensions: int = 1 << 18, l2: float = 1e-4
) -> QualityModel:
    """Fit on all but a held-out share of each class (chosen by a hash of the text, so the split
    is reproducible and duplicates stay on one side); `metrics` holds held-out and training scores."""
    from lmforge.data.words import unit_interval

    documents = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    held_out = np.array([unit_interval(document.text, seed=7) < val_fraction for document in documents], dtype=bool)
    if val_fraction > 0 and (held_out.all() or not held_out.any()):
        held_out = np.arange(len(documents)) % max(2, round(1 / val_fraction)) == 0  # a tiny set: every k-th
    training = [document for document, out in zip(documents, held_out) if not out]
    model = fit(training, labels[~held_out], dimensions=dimensions, l2=l2)
    model.metrics = {f"train_{key}": value for key, value in evaluate(model, training, labels[~held_out]).items()}
    if held_out.any():
        tested = [document for document, out in zip(documents, held_out) if out]
        model.metrics.update({f"heldout_{key}": value for key, value in evaluate(model, tested, labels[held_out]).items()})
    return model
