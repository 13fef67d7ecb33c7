"""Fine-tuning batches: stable splits, packing that never crosses examples, padding, exact resume and ranks."""

from __future__ import annotations

import random

import pytest
import torch

from lmforge.data.examples import (
    ChatExample,
    CompletionExample,
    ExampleBatches,
    LabeledBatches,
    Message,
    TokenizedExample,
    split_by_hash,
)
from lmforge.errors import LmforgeError

CONTEXT = 24
PAD = 0


def make_examples(count: int = 60, seed: int = 0) -> list[TokenizedExample]:
    """Examples of 3..20 ids (from 1, so padding is distinguishable): an untrained prompt, possibly empty, then trained ids."""
    generator = random.Random(seed)
    examples = []
    for index in range(count):
        length = generator.randint(3, 20)
        prompt = generator.randint(0, length - 1)  # 0: everything trained, as with prompt+completion
        ids = [generator.randint(1, 999) for _ in range(length)]
        examples.append(TokenizedExample(ids, [False] * prompt + [True] * (length - prompt), f"ex.jsonl:{index + 1}"))
    return examples


def batches_of(loader, count: int, size: int) -> list[dict[str, torch.Tensor]]:
    return [loader.next_batch(size) for _ in range(count)]


def real_rows(batch: dict[str, torch.Tensor]) -> list[tuple]:
    """Each row's non-padding (input, target) pairs, to compare rows whatever the padding width."""
    rows = []
    for inputs, targets in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        pairs = list(zip(inputs, targets))
        while pairs and pairs[-1] == (PAD, -100):
            pairs.pop()
        rows.append(tuple(pairs))
    return rows


def test_split_by_hash_is_stable_when_rows_are_added():
    chats = [ChatExample((Message("user", f"question {n}"), Message("assistant", f"answer {n}")), f"a.jsonl:{n}") for n in range(400)]
    train, val = split_by_hash(chats, 0.2)
    assert len(train) + len(val) == 400 and 50 < len(val) < 110
    added = [CompletionExample(f"prompt {n}", "x", f"b.jsonl:{n}") for n in range(100)]
    moved = [ChatExample(example.messages, "elsewhere.json: item 3") for example in chats]  # sources do not count
    train_again, val_again = split_by_hash(added + moved[::-1], 0.2)
    assert {example.messages for example in val} == {example.messages for example in val_again if isinstance(example, ChatExample)}
    assert {example.messages for example in train} <= {example.messages for example in train_again if isinstance(example, ChatExample)}
    assert split_by_hash(chats, 0.0) == (chats, [])
    with pytest.raises(LmforgeError, match="validation fraction"):
        split_by_hash(chats, 1.0)


def test_packed_rows_stay_inside_the_window_and_inside_each_example():
    examples = make_examples()
    packed = ExampleBatches(examples, context_length=CONTEXT, pack=True, shuffle=False)
    assert packed.examples == 60 and len(packed) < 60 and packed.truncated == 0
    batch = packed.next_batch(len(packed))
    assert set(batch) == {"inputs", "targets", "positions", "segments"}
    assert all(tensor.shape == (len(packed), CONTEXT) and tensor.dtype == torch.long for tensor in batch.values())
    rebuilt = []
    for inputs, targets, positions, segments in zip(*(batch[name].tolist() for name in ("inputs", "targets", "positions", "segments"))):
        used = sum(segment > 0 for segment in segments)
        assert all(segment == 0 for segment in segments[used:]) and all(target == -100 for target in targets[used:])
        assert all(value == PAD for value in inputs[used:])
        for segment in range(1, max(segments) + 1):
            span = [index for index in range(used) if segments[index] == segment]
            assert span == list(range(span[0], span[-1] + 1)) and [positions[index] for index in span] == list(range(len(span)))
            last = span[-1]
            if last + 1 < used:  # the next input starts another example: no target crosses over
                assert targets[last] == -100
            rebuilt.append((inputs[span[0]:last + 1], targets[span[0]:last + 1]))
    # Every example appears once, with each supervised id as the target of the id before it.
    assert len(rebuilt) == len(examples)
    unmatched = list(examples)
    for inputs, targets in rebuilt:
        example = next(example for example in unmatched if example.ids[:len(inputs)] == inputs
                       and len(inputs) in (len(example.ids) - 1, len(example.ids)))
        unmatched.remove(example)
        expected = [example.ids[i + 1] if example.supervised[i + 1] else -100 for i in range(len(example.ids) - 1)]
        assert targets[:len(expected)] == expected and all(target == -100 for target in targets[len(expected):])


def test_packing_fills_rows_best_fit_decreasing():
    # In this order, filling one row at a time puts the four short examples together and the long
    # ones alone (5 rows); longest first, each short one fills a long one's row exactly (4 rows).
    examples = [TokenizedExample(list(range(1, length + 1)), [True] * length, f"ex.jsonl:{index + 1}")
                for index, length in enumerate([6] * 4 + [CONTEXT + 1 - 6] * 4)]
    packed = ExampleBatches(examples, context_length=CONTEXT, pack=True, shuffle=False)
    batch = packed.next_batch(len(packed))
    assert len(packed) == 4 and packed.tokens == 4 * (CONTEXT + 1)
    assert (batch["segments"] > 0).all() and batch["segments"].amax(dim=1).tolist() == [2] * 4
    # Lengths drawn at random: rows come out nearly full.
    examples = make_examples(400, seed=1)
    packed = ExampleBatches(examples, context_length=CONTEXT, pack=True)
    assert packed.tokens == sum(len(example.ids) for example in examples)
    assert packed.tokens / (len(packed) * (CONTEXT + 1)) > 0.95


def test_packing_loses_no_supervised_target_compared_with_padding():
    examples = make_examples()
    packed = ExampleBatches(examples, context_length=CONTEXT, pack=True, shuffle=False)
    padded = ExampleBatches(examples, context_length=CONTEXT, pack=False, shuffle=False)
    assert len(padded) == 60 and packed.supervised_tokens == padded.supervised_tokens
    assert packed.supervised_tokens == sum(example.trained_tokens for example in examples)
    count = lambda loader: int((loader.next_batch(len(loader))["targets"] != -100).sum())
    assert count(packed) == count(padded) == packed.supervised_tokens


def test_padded_rows_are_one_example_each_padded_to_the_longest():
    examples = [TokenizedExample([5, 6, 7], [False, True, True], "a"),
                TokenizedExample([8, 9, 10, 11, 12], [False, False, True, True, True], "b")]
    batch = ExampleBatches(examples, context_length=CONTEXT, pack=False, shuffle=False, pad_id=99).next_batch(2)
    assert set(batch) == {"inputs", "targets"}
    assert batch["inputs"].tolist() == [[5, 6, 99, 99], [8, 9, 10, 11]]
    assert batch["targets"].tolist() == [[6, 7, -100, -100], [-100, 10, 11, 12]]


def test_long_examples_keep_their_first_tokens_and_are_counted():
    examples = [TokenizedExample(list(range(1, 41)), [False] * 5 + [True] * 35, "long"), *make_examples(5)]
    loader = ExampleBatches(examples, context_length=CONTEXT, pack=False, shuffle=False)
    assert loader.truncated == 1
    first = loader.next_batch(1)
    assert first["inputs"].tolist() == [list(range(1, CONTEXT + 1))] and first["targets"][0, -1].item() == CONTEXT + 1


@pytest.mark.parametrize("pack", [True, False])
def test_resuming_gives_the_batches_continuing_would(pack):
    examples = make_examples()
    running = ExampleBatches(examples, context_length=CONTEXT, pack=pack, seed=3)
    batches_of(running, 7, 5)  # packed rows (about 25) pass an epoch here, padded ones (60) while continuing
    state = running.state_dict()
    assert set(state) == {"epoch", "position", "rows"}
    resumed = ExampleBatches(examples, context_length=CONTEXT, pack=pack, seed=3)
    resumed.load_state_dict(state)
    for expected, got in zip(batches_of(running, 20, 5), batches_of(resumed, 20, 5)):
        assert expected.keys() == got.keys() and all(torch.equal(expected[name], got[name]) for name in expected)
    with pytest.raises(LmforgeError, match="resume with the same data"):
        ExampleBatches(examples[:-5], context_length=CONTEXT, pack=pack).load_state_dict(state)


def test_two_ranks_read_the_rows_one_rank_reads_with_twice_the_batch():
    examples = make_examples()
    single = ExampleBatches(examples, context_length=CONTEXT, pack=False, seed=1)
    ranks = [ExampleBatches(examples, context_length=CONTEXT, pack=False, seed=1, rank=rank, world_size=2) for rank in (0, 1)]
    for _ in range(8):  # 8 x 8 rows: into the second epoch
        together = real_rows(ranks[0].next_batch(4)) + real_rows(ranks[1].next_batch(4))
        assert sorted(together) == sorted(real_rows(single.next_batch(8)))
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_each_epoch_visits_every_row_once_in_a_seeded_order():
    examples = make_examples(12)
    ordered = ExampleBatches(examples, context_length=CONTEXT, pack=False, shuffle=False)
    first_rows = [tuple(example.ids[:-1]) for example in examples]
    for _ in range(2):  # the identity order, epoch after epoch
        assert [tuple(value for value, _ in row) for row in real_rows(ordered.next_batch(12))] == first_rows
    shuffled = ExampleBatches(examples, context_length=CONTEXT, pack=False, seed=5)
    epochs = [[tuple(value for value, _ in row) for row in real_rows(shuffled.next_batch(12))] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(first_rows) and epochs[0] != epochs[1]
    with pytest.raises(LmforgeError, match="too few for 16 rank"):
        ExampleBatches(examples, context_length=CONTEXT, pack=False, world_size=16)


def test_labeled_batches_pad_and_point_at_each_last_token():
    rows = [([5, 6, 7], 1), ([8], 0), ([9, 10], 2), ([11, 12, 13, 14], 0)]
    loader = LabeledBatches(rows, shuffle=False, pad_id=99)
    batch = loader.next_batch(3)
    assert batch["inputs"].tolist() == [[5, 6, 7], [8, 99, 99], [9, 10, 99]]
    assert batch["last"].tolist() == [2, 0, 1] and batch["labels"].tolist() == [1, 0, 2]
    shuffled = LabeledBatches(rows, seed=2)
    shuffled.next_batch(3)
    resumed = LabeledBatches(rows, seed=2)
    resumed.load_state_dict(shuffled.state_dict())
    for _ in range(3):
        expected, got = shuffled.next_batch(3), resumed.next_batch(3)
        assert all(torch.equal(expected[name], got[name]) for name in expected)
    halves = [LabeledBatches(rows, seed=2, rank=rank, world_size=2).next_batch(1)["labels"].item() for rank in (0, 1)]
    assert sorted(halves) == sorted(LabeledBatches(rows, seed=2).next_batch(2)["labels"].tolist())
