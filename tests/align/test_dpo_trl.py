"""DPO parity with TRL: on the transformers export of the same weights and the same token ids,
lmforge's response log-probabilities, DPO and IPO losses and reward figures are TRL's
`DPOTrainer`'s (its collator, its fused output layer, its `compute_loss`).

The policy is the base model with its weights perturbed, the reference the base model itself, so
the log-ratios, and with them every figure, are far from zero."""

from __future__ import annotations

import os

import pytest
import torch

from lmforge.data.examples.preferences import PairBatches, read_preferences, tokenize_pairs
from lmforge.interop.hf import to_hf
from lmforge.model.checkpoint_directory import load_checkpoint, save_checkpoint
from lmforge.tokenizer import load_tokenizer
from lmforge.train.alignment import reference_log_probs
from lmforge.train.objectives.preference import DPO, sequence_log_probs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL's trainer pings the Hub otherwise
trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402

BETA = 0.1
PAIRS = 8
FIGURES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected")


class PreTokenizedDPOTrainer(trl.DPOTrainer):
    """TRL tokenizes text rows itself; these rows are lmforge's token ids already."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a few cores run faster on one thread than fighting over two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(align_base, tmp_path_factory, one_thread):
    """(lmforge policy, lmforge reference, their transformers export directories): the policy is
    the base checkpoint with every weight perturbed by noise."""
    root = tmp_path_factory.mktemp("dpo-trl")
    reference = load_checkpoint(align_base / "base").eval()
    policy = load_checkpoint(align_base / "base").eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_checkpoint(policy, root / "policy", tokenizer=align_base / "tokenizer.json")
    to_hf(align_base / "base", root / "reference-hf")
    to_hf(root / "policy", root / "policy-hf")
    return policy, reference, root / "policy-hf", root / "reference-hf"


@pytest.fixture(scope="module")
def pairs(align_base):
    tokenizer = load_tokenizer(align_base / "tokenizer.json")
    examples, _ = read_preferences([align_base / "pairs.jsonl"])
    tokenized, _ = tokenize_pairs(examples, tokenizer, None, context_length=48)
    return tokenized[:PAIRS], tokenizer.eos_id


def _hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def _trainer(models, pairs, tmp_path, loss_type: str):
    """TRL's trainer of the exported policy against the exported reference, in eval mode."""
    _, _, policy_hf, reference_hf = models
    rows, pad_id = pairs
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(policy_hf / "tokenizer.json"))
    tokenizer.pad_token = tokenizer.eos_token = tokenizer.convert_ids_to_tokens(pad_id)
    dataset = datasets.Dataset.from_list([{"prompt_ids": list(pair.prompt), "chosen_ids": list(pair.chosen),
                                           "rejected_ids": list(pair.rejected)} for pair in rows])
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=BETA, loss_type=loss_type, use_cpu=True, bf16=False,
                         gradient_checkpointing=False, report_to=[], disable_tqdm=True, save_strategy="no")
    trainer = PreTokenizedDPOTrainer(model=_hf(policy_hf), ref_model=_hf(reference_hf), args=args,
                                     train_dataset=dataset, processing_class=tokenizer)
    trainer.model.eval()
    batch = DataCollatorForPreference(pad_token_id=pad_id)(list(dataset))
    return trainer, batch


def _lmforge_batch(pairs, reference=None, average: bool = False):
    rows, pad_id = pairs
    batches = PairBatches(rows, shuffle=False, pad_id=pad_id)
    if reference is not None:
        batches.set_reference(reference_log_probs(reference, batches, len(rows), "fp32", torch.device("cpu"), average))
    return batches.batch_of(range(len(rows)))


def _trl_sequence_log_probs(model, batch) -> torch.Tensor:
    """Each row's response log-probability the way `DPOTrainer._compute_loss` sums it."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
    return outputs.log_probs[:, -(labels.shape[1] - 1):].sum(dim=1)


def _close(ours: float | torch.Tensor, theirs: float | torch.Tensor, rel: float = 1e-5) -> bool:
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    return torch.allclose(ours, theirs, rtol=rel, atol=rel)


def test_batches_and_log_probs_match_trl(models, pairs, tmp_path):
    policy, reference, *_ = models
    trainer, trl_batch = _trainer(models, pairs, tmp_path, "sigmoid")
    batch = _lmforge_batch(pairs)
    assert torch.equal(batch["inputs"], trl_batch["input_ids"])  # chosen rows, then rejected; right-padded alike
    assert torch.equal((batch["targets"] != -100)[:, :-1], trl_batch["completion_mask"][:, 1:].bool())
    with torch.no_grad():
        for ours, theirs in ((policy, trainer.model), (reference, trainer.ref_model)):
            expected = _trl_sequence_log_probs(theirs, trl_batch)
            got = sequence_log_probs(ours, batch)
            assert _close(got, expected), (got, expected)
            expected_mean = expected / trl_batch["completion_mask"].sum(dim=1)
            assert _close(sequence_log_probs(ours, batch, average=True), expected_mean)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_and_figures_match_trl(models, pairs, tmp_path, loss_type):
    """IPO averages the log-probabilities over the response tokens on both sides (lmforge's
    `--logps mean`, IPO's default). TRL's reward and log-prob figures stay sums under IPO while
    lmforge's follow the averaged log-probabilities, so under IPO only the loss is compared."""
    policy, reference, *_ = models
    average = loss_type == "ipo"
    trainer, trl_batch = _trainer(models, pairs, tmp_path, loss_type)
    batch = _lmforge_batch(pairs, reference, average)
    objective = DPO(BETA, loss_type, average)
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, trl_batch).item()
        ours = objective.loss(policy, batch).item() / PAIRS
    assert ours > 0.05
    assert _close(ours, theirs), (ours, theirs)
    if loss_type == "sigmoid":
        figures = {name: value / PAIRS for name, value in objective.take_figures().items()}
        expected = {name: trainer._metrics["eval"][name][-1] for name in FIGURES}
        assert 0 < figures["rewards/accuracies"] < 1 and abs(figures["rewards/margins"]) > 1e-3
        for name in FIGURES:
            assert _close(figures[name], expected[name]), (name, figures[name], expected[name])
