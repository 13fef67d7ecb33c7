"""Classification fine-tuning pieces: the last-token head, its objective, what trains, the head's
files, validation figures, and the metrics behind them."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.eval.classification_metrics import accuracy, confusion_matrix, macro_f1
from lmforge.model.checkpoint_directory import load_checkpoint, load_weights
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.train.objectives.classification import (
    Classification,
    attach_head,
    load_classification_checkpoint,
    load_head,
    padded_batches,
    predict,
    save_classification_checkpoint,
    save_head,
    select_trainable,
    validation_figures,
)

LABELS = ["negative", "neutral", "positive"]


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=64, context_length=32, **overrides)
    return Transformer(config)


def random_head(model: Transformer, labels=LABELS):
    """A head with random weights: a zero head predicts uniform probabilities whatever the input."""
    head = attach_head(model, labels)
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
        head.bias.normal_(0, 0.1)
    return head


ROWS = [[5, 9, 11], [7, 3, 3, 8, 12, 40, 41, 2], [6], [20, 21, 22, 23, 24]]


def batch_of(rows, labels, pad_id=0):
    batch = next(padded_batches(rows, len(rows), pad_id))
    return {**batch, "labels": torch.tensor(labels)}


class ListSource:
    """A labeled batch source like `LabeledBatches`: rows in order, a position to resume from."""

    def __init__(self, rows, labels):
        self.rows, self.labels, self.position = rows, labels, 0

    def __len__(self):
        return len(self.rows)

    def state_dict(self):
        return {"epoch": 0, "position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]

    def next_batch(self, size):
        indices = [(self.position + offset) % len(self.rows) for offset in range(size)]
        self.position += size
        return batch_of([self.rows[index] for index in indices], [self.labels[index] for index in indices])


# -- the head and the objective ------------------------------------------------------------------

def test_padding_never_changes_a_prediction():
    model = tiny_model()
    head = random_head(model)
    alone = [predict(model, head, padded_batches([row], 1)) for row in ROWS]
    for pad_id in (0, 63):
        together = predict(model, head, padded_batches(ROWS, len(ROWS), pad_id))
        torch.testing.assert_close(together, torch.cat(alone), atol=1e-6, rtol=1e-5)
    # The head reads the last real token, not the last position: a longer row's padding is
    # position -1 of the short rows, and its state differs from the real last token's.
    hidden = model(next(padded_batches(ROWS, len(ROWS)))["inputs"], hidden_states=True)
    assert not torch.allclose(head(hidden, torch.full((len(ROWS),), hidden.shape[1] - 1)).softmax(-1), torch.cat(alone))


def test_a_zero_head_starts_at_log_n_labels():
    model = tiny_model()
    head = attach_head(model, LABELS)
    batch = batch_of(ROWS, [0, 1, 2, 1])
    loss = Classification(head).loss(model, batch)
    assert loss.item() == pytest.approx(len(ROWS) * math.log(len(LABELS)), rel=1e-6)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0  # the head learns from the first step
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.named_parameters() if not n.startswith("classifier."))


def test_objective_is_the_sum_of_each_rows_cross_entropy():
    model = tiny_model()
    head = random_head(model)
    labels = [2, 0, 1, 2]
    objective = Classification(head)
    batch = batch_of(ROWS, labels)
    assert objective.count(batch) == len(ROWS)
    loss = objective.loss(model, batch)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    expected = 0.0
    for row, label in zip(ROWS, labels):
        logits = model(torch.tensor([row]), hidden_states=True)[0, -1] @ head.weight.T + head.bias
        expected += -torch.log_softmax(logits, dim=-1)[label]
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_objective_calls_the_wrapper_it_is_given():
    """Under DDP the objective gets a wrapper: it must call that, not reach for the module inside."""
    model = tiny_model()
    head = random_head(model)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return model(*args, **kwargs)

    Classification(head).loss(wrapper, batch_of(ROWS, [0, 0, 1, 1]))
    assert calls == [{"hidden_states": True}]


def test_the_head_is_a_submodule_and_base_names_are_unchanged():
    model = tiny_model()
    before = [name for name, _ in model.named_parameters()]
    head = attach_head(model, LABELS)
    after = [name for name, _ in model.named_parameters()]
    assert after == before + ["classifier.weight", "classifier.bias"]
    assert model.classifier is head and head.weight.shape == (len(LABELS), model.config.d_model)
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0


# -- what trains ---------------------------------------------------------------------------------

def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("tie", [False, True])
def test_select_trainable(tie):
    model = tiny_model(tie_embeddings=tie)
    attach_head(model, LABELS)
    names = {name for name, _ in model.named_parameters()}
    head = {"classifier.weight", "classifier.bias"}

    select_trainable(model, "head")
    assert trainable(model) == head

    select_trainable(model, "last-k-blocks", k=1)
    expected = head | {name for name in names if name.startswith(("blocks.1.", "norm."))}
    assert trainable(model) == expected and any(name.startswith("blocks.1.") for name in expected)

    select_trainable(model, "last-k-blocks", k=2)
    assert trainable(model) == head | {name for name in names if name.startswith(("blocks.", "norm."))}

    select_trainable(model, "all")
    # An untied output layer gets no gradient from classification, so it is not trained.
    assert trainable(model) == (names if tie else names - {"lm_head.weight"})

    select_trainable(model, "head")  # choosing again undoes the previous choice
    assert trainable(model) == head


def test_select_trainable_refuses_a_bad_k():
    model = tiny_model()
    attach_head(model, LABELS)
    for k in (0, 3):
        with pytest.raises(LmforgeError, match=r"k=.*1 ≤ k ≤ 2"):
            select_trainable(model, "last-k-blocks", k=k)


def test_head_only_training_learns_a_separable_task():
    """Label = which of two tokens starts the row; only the head trains, so the base stays as it was
    and the information must come through attention to the last real token."""
    model = tiny_model(seed=1)
    head = attach_head(model, ["A", "B"])
    select_trainable(model, "head")
    base = {name: tensor.clone() for name, tensor in model.state_dict().items() if not name.startswith("classifier.")}
    generator = torch.Generator().manual_seed(1)

    def toy_batch(size):
        labels = torch.randint(0, 2, (size,), generator=generator)
        lengths = torch.randint(2, 8, (size,), generator=generator)
        rows = [[3 + int(label), *torch.randint(10, 64, (int(length) - 1,), generator=generator).tolist()]
                for label, length in zip(labels, lengths)]
        return batch_of(rows, labels.tolist())

    objective = Classification(head)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.eval()  # no dropout in tiny-llama, but be explicit
    for _ in range(100):
        batch = toy_batch(64)
        loss = objective.loss(model, batch) / objective.count(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = [toy_batch(128) for _ in range(2)]
    predicted = predict(model, head, held_out).argmax(-1).tolist()
    truth = torch.cat([batch["labels"] for batch in held_out]).tolist()
    assert accuracy(truth, predicted) >= 0.9
    for name, tensor in model.state_dict().items():
        if name in base:
            assert torch.equal(tensor, base[name]), name


# -- validation figures --------------------------------------------------------------------------

def test_validation_figures_match_predictions_and_leave_the_source_where_it_was():
    model = tiny_model()
    head = random_head(model)
    rows = ROWS + [[30, 31], [44, 45, 46], [50]]
    labels = [0, 1, 2, 0, 1, 2, 0]
    source = ListSource(rows, labels)
    source.position = 5  # training is mid-epoch
    model.train()
    figures = validation_figures(model, head, source, n_batches=10, batch_size=3)
    assert source.position == 5 and model.training and head.training
    predicted = predict(model, head, padded_batches(rows, 2)).argmax(-1).tolist()
    assert figures["val_accuracy"] == accuracy(labels, predicted)
    assert figures["val_macro_f1"] == macro_f1(labels, predicted)
    assert figures["val_confusion"] == confusion_matrix(labels, predicted, len(LABELS))
    assert sum(map(sum, figures["val_confusion"])) == len(rows)  # each row once, none twice
    json.dumps(figures)  # goes into metrics.jsonl

    few = validation_figures(model, head, source, n_batches=1, batch_size=2)
    assert sum(map(sum, few["val_confusion"])) == 2


# -- the head's files ----------------------------------------------------------------------------

def test_save_and_load_the_head(tmp_path):
    model = tiny_model()
    head = random_head(model, ["нет", "是", "yes"])
    save_head(head, ["нет", "是", "yes"], tmp_path)
    config = json.loads((tmp_path / "classifier.json").read_text(encoding="utf-8"))
    assert config["labels"] == ["нет", "是", "yes"] and config["pooling"] == "last-token" and config["format"]
    loaded, labels = load_head(tmp_path, model.config.d_model)
    assert labels == ["нет", "是", "yes"]
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    with pytest.raises(LmforgeError, match="classifier.safetensors.*d_model 32"):
        load_head(tmp_path, 32)


def test_a_directory_without_a_head_is_refused(tmp_path):
    with pytest.raises(LmforgeError, match="not a classification fine-tune.*run lmforge finetune --task classify"):
        load_head(tmp_path, 64)
    save_head(random_head(tiny_model()), LABELS, tmp_path)
    (tmp_path / "classifier.safetensors").unlink()
    with pytest.raises(LmforgeError, match="classifier.safetensors: missing"):
        load_head(tmp_path, 64)


@pytest.mark.parametrize("change, message", [
    ({"labels": ["only"]}, "labels must be a list of at least two distinct"),
    ({"labels": ["a", "a", "b"]}, "labels must be a list of at least two distinct"),
    ({"pooling": "mean"}, "pooling 'mean' is not supported"),
    ({"format": "other"}, "not a classifier config"),
])
def test_a_bad_classifier_json_is_refused(tmp_path, change, message):
    save_head(random_head(tiny_model()), LABELS, tmp_path)
    config = json.loads((tmp_path / "classifier.json").read_text())
    (tmp_path / "classifier.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(LmforgeError, match=message):
        load_head(tmp_path, 64)


def test_a_classification_checkpoint_round_trips(tmp_path):
    model = tiny_model()
    head = random_head(model)
    save_classification_checkpoint(model, LABELS, tmp_path / "run")
    assert not any(name.startswith("classifier.") for name in load_weights(tmp_path / "run"))
    load_checkpoint(tmp_path / "run")  # a plain checkpoint for every other command
    loaded, loaded_head, labels = load_classification_checkpoint(tmp_path / "run")
    assert labels == LABELS and loaded.classifier is loaded_head
    torch.testing.assert_close(predict(loaded, loaded_head, padded_batches(ROWS, 2)),
                               predict(model, head, padded_batches(ROWS, 2)), atol=0, rtol=0)


# -- metrics -------------------------------------------------------------------------------------

def test_metrics_by_hand():
    truth = [0, 0, 1, 1, 2, 2]
    predicted = [0, 1, 1, 1, 0, 2]
    assert accuracy(truth, predicted) == pytest.approx(4 / 6)
    assert confusion_matrix(truth, predicted, 4) == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # F1: class 0: 2·1/(2+2) = 0.5; class 1: 2·2/(2+3) = 0.8; class 2: 2·1/(2+1) = 2/3.
    assert macro_f1(truth, predicted) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # Class 1 absent from both truth and predictions: left out, not averaged in as 0 or 1.
    assert macro_f1([0, 2, 2], [0, 2, 0]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    # A class only predicted (never true) counts, with F1 0.
    assert macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1([1, 1], [1, 1]) == 1.0


def test_metrics_refuse_what_cannot_be_measured():
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])
    with pytest.raises(ValueError, match="2 true labels but 1"):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError, match="not below n_labels=2"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_metrics_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    for n_labels, size in ((2, 50), (5, 40), (7, 10)):  # with 7 labels over 10 examples some are absent
        truth = torch.randint(0, n_labels, (size,), generator=generator).tolist()
        predicted = torch.randint(0, n_labels, (size,), generator=generator).tolist()
        assert accuracy(truth, predicted) == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))
        assert macro_f1(truth, predicted) == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="macro"))
        expected = sklearn_metrics.confusion_matrix(truth, predicted, labels=list(range(n_labels))).tolist()
        assert confusion_matrix(truth, predicted, n_labels) == expected
