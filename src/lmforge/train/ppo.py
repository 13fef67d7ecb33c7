"""PPO against a reward model (InstructGPT's third stage) on the one training loop.

The batch source, `Rollouts`, is where PPO differs from other jobs: when its buffer is used up it
samples responses to a batch of prompts with the current policy, scores them with the reward
model, computes each token's log-probability under the policy and the frozen reference, the value
head's estimates, the KL-penalised rewards and the advantages; then it hands out that buffer's
rows `ppo_epochs` times, shuffled, as micro-batches. Its state — the buffer included — is saved
with every checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.examples.batches import IGNORE, EpochOrder
from lmforge.data.examples.preferences import read_prompts, tokenize_response
from lmforge.distributed.mesh import Topology
from lmforge.errors import LmforgeError
from lmforge.infer.generate import generate_tokens
from lmforge.model.transformer import Transformer
from lmforge.runtime import autocast, resolve_precision
from lmforge.tokenizer.special_ids import special_ids
from lmforge.train.alignment import AlignOptions, load_reward_model, score_sequences
from lmforge.train.chat_format import chat_format, template_tokens
from lmforge.train.config import TrainConfig
from lmforge.train.finetuning import (
    _context_length,
    _identity,
    _note_skipped,
    _rebuilt,
    _save_tokenizer,
    _saver,
    _starting_model,
    load_base,
)
from lmforge.train.job import TrainingJob
from lmforge.train.objectives.ppo import (
    PPO,
    ValueHead,
    advantages_and_returns,
    token_rewards,
    whiten,
)

BUFFER_FIELDS = ("inputs", "targets", "old_logps", "old_values", "advantages", "returns", "score", "kl")


@dataclass
class PpoOptions(AlignOptions):
    """What a PPO run decides beyond a fine-tune's options (see `lmforge align ppo --help`)."""

    kl_coef: float = 0.05
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ppo_epochs: int = 4
    rollout_batch: int = 16
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float | None = None


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big") >> 1


class Rollouts:
    """The PPO job's batch source (see the module). `policy` is the model the loop trains (with its
    `value_head`); `reference(batch)` gives per-token log-probabilities of the batch's targets
    under the frozen starting model; `reward(prompts, responses)` a score for each response (the reward model's)."""

    def __init__(self, prompts: Sequence[Sequence[int]], policy: Transformer, reference: Callable[[dict], torch.Tensor],
                 reward: Callable[[list[list[int]], list[list[int]]], list[float]], options: PpoOptions, *, seed: int, stop_ids: Sequence[int],
                 vocab_size: int, pad_id: int, precision: str) -> None:
        self.prompts = [list(ids) for ids in prompts]
        self.policy, self.reference, self.reward, self.options = policy, reference, reward, options
        self.seed, self.stop_ids, self.vocab_size, self.pad_id, self.precision = seed, set(stop_ids), vocab_size, pad_id, precision
        self._order = EpochOrder(len(self.prompts), shuffle=True, seed=seed, rank=0, world_size=1)
        self._buffer: dict[str, torch.Tensor] | None = None
        self._schedule: list[int] = []
        self._position = 0
        self._rollouts = 0

    def __len__(self) -> int:
        return len(self.prompts)

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        if self._position >= len(self._schedule):
            self._roll_out()
        rows = self._schedule[self._position:self._position + size]
        self._position += len(rows)
        return {name: self._buffer[name][rows] for name in BUFFER_FIELDS}

    def _sample(self, prompt: list[int], index: int) -> list[int]:
        """One response: sampled ids up to and including the first stop id (at least one id)."""
        options = self.options
        new = list(generate_tokens(self.policy, prompt, options.max_new_tokens, temperature=options.temperature,
                                   top_p=options.top_p, seed=_seed(self.seed, self._rollouts, index),
                                   tokenizer_vocab_size=self.vocab_size))
        stop = next((position for position, token in enumerate(new) if token in self.stop_ids), None)
        return new[:stop + 1] if stop is not None else new

    @torch.no_grad()
    def _roll_out(self) -> None:
        options, policy = self.options, self.policy
        device = policy.token_embedding.weight.device
        prompts = [self.prompts[index] for index in self._order.take(options.rollout_batch)]
        policy.eval()
        try:
            responses = [self._sample(prompt, index) for index, prompt in enumerate(prompts)]
            rows = [prompt + response for prompt, response in zip(prompts, responses)]
            width = max(map(len, rows))
            inputs = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            for row, (prompt, response) in enumerate(zip(prompts, responses)):
                inputs[row, :len(prompt) + len(response)] = torch.tensor(prompt + response)
                targets[row, len(prompt) - 1:len(prompt) + len(response) - 1] = torch.tensor(response)
            inputs, targets = inputs.to(device), targets.to(device)
            mask = targets != IGNORE
            with autocast(device, self.precision):
                hidden = policy(inputs, hidden_states=True)
                values = policy.value_head(hidden) * mask
                # As the objective computes them in training, so the first ratios are 1
                picked = policy.lm_head(hidden[mask]).float().log_softmax(-1).gather(1, targets[mask][:, None]).squeeze(1)
                reference = self.reference({"inputs": inputs, "targets": targets})
            logps = torch.zeros(mask.shape, device=device).masked_scatter(mask, picked)
            reference = reference.float() * mask
            scores = torch.tensor(self.reward(prompts, responses), dtype=torch.float32, device=device)
            rewards, kl = token_rewards(scores, logps, reference, mask, options.kl_coef)
            advantages, returns = advantages_and_returns(rewards, values, mask, options.gamma, options.gae_lambda)
        finally:
            policy.train()
        self._buffer = {"inputs": inputs.cpu(), "targets": targets.cpu(), "old_logps": logps.cpu(),
                        "old_values": values.float().cpu(), "advantages": whiten(advantages, mask).cpu(),
                        "returns": returns.cpu(), "score": scores.cpu(), "kl": kl.sum(dim=1).cpu()}
        generator = torch.Generator().manual_seed(_seed(self.seed, self._rollouts, -1))
        self._schedule = [int(row) for _ in range(options.ppo_epochs)
                          for row in torch.randperm(len(rows), generator=generator)]
        self._position = 0
        self._rollouts += 1

    def state_dict(self) -> dict:
        buffer = None if self._buffer is None else {
            name: {"dtype": str(tensor.dtype).removeprefix("torch."), "values": tensor.tolist()}
            for name, tensor in self._buffer.items()}
        return {"order": self._order.state_dict(), "rollouts": self._rollouts, "position": self._position,
                "schedule": self._schedule, "buffer": buffer}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"order", "rollouts", "position", "schedule", "buffer"} <= set(state):
            raise LmforgeError("the saved PPO data state is incomplete (a checkpoint of another kind of run?)")
        self._order.load_state_dict(state["order"])
        self._rollouts, self._position, self._schedule = state["rollouts"], state["position"], list(state["schedule"])
        buffer = state["buffer"]
        self._buffer = None if buffer is None else {
            name: torch.tensor(item["values"], dtype=getattr(torch, item["dtype"])) for name, item in buffer.items()}


class _FirstPrompt:
    """One prompt as a batch: what merging LoRA compares logits on."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def next_batch(self, size: int) -> dict[str, torch.Tensor]:
        return {"inputs": torch.tensor([self.ids])}


def ppo_job(checkpoint: Path, data: Sequence[Path], out: Path, train: TrainConfig, topology: Topology,
            options: PpoOptions, reward_model: Path) -> TrainingJob:
    """PPO: the policy (and a value head) from `checkpoint`, the reference its frozen copy (with
    LoRA: the same model with the adapter switched off), rewards from `reward_model`."""
    if topology.distributed:
        raise LmforgeError("align ppo runs in one process (its rollouts are sampled on one device); run it without torchrun")
    config, state, tokenizer, generation = load_base(checkpoint)
    rows, report = read_prompts(data, on_bad_row=options.on_bad_row)
    _note_skipped(report, options)
    template = None
    if any(not isinstance(row.prompt, str) for row in rows):
        config, tokenizer, generation, template = chat_format(config, state, tokenizer, generation, options.notes)
    special = template_tokens(tokenizer, generation)
    context_length = _context_length(train, config)
    budget = context_length - options.max_new_tokens
    if budget < 1:
        raise LmforgeError(f"--max-new-tokens {options.max_new_tokens} leaves no room for a prompt in the context of "
                           f"{context_length} tokens")
    prompts, cut = [], 0
    for row in rows:
        ids = tokenize_response(row.prompt, "", tokenizer, template, source=row.source, **special)[0]
        if not ids:
            raise LmforgeError(f"{row.source}: the prompt is empty")
        cut += len(ids) > budget
        prompts.append(ids[-budget:])
    if len(prompts) < options.rollout_batch:
        raise LmforgeError(f"{len(prompts)} prompt(s) are fewer than --rollout-batch {options.rollout_batch}; "
                           "give more prompts or a smaller --rollout-batch")
    minibatch = train.micro_batch_size * train.grad_accum
    if options.rollout_batch % minibatch:
        raise LmforgeError(f"--rollout-batch {options.rollout_batch} must be a multiple of the optimisation batch "
                           f"(--train.micro_batch_size × --train.grad_accum = {minibatch})")
    if cut:
        options.notes.append(f"{cut} prompt(s) were longer than {budget} tokens (the context less --max-new-tokens) "
                             "and kept their last tokens")

    scorer, head, reward_tokenizer, _ = load_reward_model(reward_model, topology.device)
    if reward_tokenizer.backend.get_vocab(with_added_tokens=True) != tokenizer.backend.get_vocab(with_added_tokens=True):
        raise LmforgeError(f"{reward_model}: the reward model's tokenizer differs from the policy's ({checkpoint}); "
                           "train the reward model from the same base (or SFT) checkpoint")
    reward_limit = scorer.config.context_length

    def reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        sequences = [(prompt + response)[-reward_limit:] for prompt, response in zip(prompts, responses)]
        return score_sequences(scorer, head, sequences, train.micro_batch_size)

    frozen = None

    def keep_reference(base: Transformer) -> None:  # LoRA's is the same model with the adapter off: no copy
        nonlocal frozen
        if options.method != "lora":
            frozen = copy.deepcopy(base).requires_grad_(False).eval().to(topology.device)

    model, fingerprint = _starting_model(config, state, checkpoint, options, train.seed, before_method=keep_reference)
    model.value_head = ValueHead(config.d_model)

    def reference(batch: dict) -> torch.Tensor:
        if frozen is not None:
            return frozen(batch["inputs"], targets=batch["targets"], log_probs=True)
        from lmforge.peft.lora import lora_disabled

        with lora_disabled(model):
            return model(batch["inputs"], targets=batch["targets"], log_probs=True)

    stops = special_ids(generation, tokenizer).stop_ids
    precision = resolve_precision(train.precision, topology.device)
    rollouts = Rollouts(prompts, model, reference, reward, options, seed=train.seed, stop_ids=sorted(stops),
                        vocab_size=tokenizer.vocab_size, pad_id=tokenizer.eos_id or 0, precision=precision)
    options.notes.append(f"{len(prompts)} prompts; {options.rollout_batch} responses a rollout, each used "
                         f"{options.ppo_epochs} times in batches of {minibatch}")
    tokenizer_path = _save_tokenizer(tokenizer, out, topology)
    identity = _identity(config, options, kl_coef=options.kl_coef, clip=options.clip, ppo_epochs=options.ppo_epochs,
                         rollout_batch=options.rollout_batch, max_new_tokens=options.max_new_tokens)

    def rebuild() -> Transformer:
        rebuilt = _rebuilt(config, options)
        rebuilt.value_head = ValueHead(config.d_model)
        return rebuilt

    objective = PPO(model.lm_head, model.value_head, options.clip, options.value_clip, options.value_coef)
    return TrainingJob(
        "ppo", model, config, objective, rollouts, None, tokenizer_path, context_length, generation=generation,
        identity=identity, save_model=_saver(options, fingerprint, checkpoint, tokenizer_path, generation, _FirstPrompt(prompts[0])),
        rebuild=rebuild, frozen_base=options.method != "full",
    )
