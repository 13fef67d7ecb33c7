"""The batched engine: a sequence's tokens do not depend on its neighbours, equal a cache-free greedy
loop, and stop strings, stop ids, seeds, log-probabilities and cancellation behave."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.engine import Engine, Sampling
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer

ARCHITECTURES = ["tiny-gpt2", "tiny-llama", "tiny-gemma", "tiny-mla-moe"]


def _model(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset_config(name)).eval()


def _prompts(count: int, vocab: int = 500) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, vocab, (int(length),), generator=generator).tolist()
            for length in torch.randint(2, 30, (count,), generator=generator)]


def _greedy_without_cache(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_tokens_do_not_depend_on_the_batch(name):
    model = _model(name)
    prompts = _prompts(8)
    greedy = Sampling(max_tokens=24)
    alone = [Engine(model, lambda ids: "").generate([prompt], greedy)[0].generated for prompt in prompts]
    together = [request.generated for request in Engine(model, lambda ids: "", max_batch=8).generate(prompts, greedy)]
    assert together == alone
    assert alone[0] == _greedy_without_cache(model, prompts[0], 24)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_requests_join_and_leave_while_others_decode(name):
    """Continuous batching: three slots for eight requests of different lengths, some submitted
    mid-way; a finished request's slot is taken by the last one, whose cache moves with it."""
    model = _model(name)
    prompts = _prompts(8)
    lengths = [5, 30, 12, 40, 3, 22, 17, 9]
    engine = Engine(model, lambda ids: "", max_batch=3)
    requests = [engine.submit(prompt, Sampling(max_tokens=length)) for prompt, length in zip(prompts[:4], lengths)]
    for _ in range(7):
        engine.step()
    requests += [engine.submit(prompt, Sampling(max_tokens=length)) for prompt, length in zip(prompts[4:], lengths[4:])]
    engine.run(requests)
    for request, prompt, length in zip(requests, prompts, lengths):
        assert request.finish_reason == "length"
        assert request.generated == _greedy_without_cache(model, prompt, length)
    assert engine.running == [] and not engine.waiting


def test_seeds_repeat_whatever_the_neighbours():
    model = _model("tiny-llama")
    prompts = _prompts(4)
    sampled = Sampling(max_tokens=20, temperature=1.0, top_k=50, seed=3)
    alone = Engine(model, lambda ids: "").generate([prompts[0]], sampled)[0].generated
    mixed = Engine(model, lambda ids: "", max_batch=4).generate(prompts, sampled)[0].generated
    other_seed = Engine(model, lambda ids: "").generate([prompts[0]], Sampling(max_tokens=20, temperature=1.0, top_k=50,
                                                                               seed=4))[0].generated
    assert alone == mixed and alone != other_seed


def test_log_probabilities_equal_the_full_forward_pass():
    model = _model("tiny-llama")
    prompt = _prompts(1)[0]
    request = Engine(model, lambda ids: "").generate([prompt], Sampling(max_tokens=6, logprobs=3, prompt_logprobs=True))[0]
    tokens = prompt + request.generated
    with torch.no_grad():
        log_probs = model(torch.tensor([tokens]))[0].float().log_softmax(-1)
    expected = log_probs[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]
    got = [item.logprob for item in request.prompt_logprobs[1:] + request.logprobs]
    assert request.prompt_logprobs[0] is None
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=0)
    first = request.logprobs[0]
    top_values, top_ids = log_probs[len(prompt) - 1].topk(3)
    assert [token for token, _ in first.top] == top_ids.tolist() and first.token_id == top_ids[0]
    torch.testing.assert_close(torch.tensor([value for _, value in first.top]), top_values, atol=1e-5, rtol=0)


def _letters(ids: list[int]) -> str:
    return "".join(chr(97 + token % 26) for token in ids)


def test_stop_strings_cut_the_text_and_are_never_streamed():
    model = _model("tiny-llama")
    prompt = _prompts(1)[0]
    free = Engine(model, _letters).generate([prompt], Sampling(max_tokens=30))[0]
    stop = free.text[11:14]
    first = free.text.find(stop)
    pieces = []
    engine = Engine(model, _letters)
    request = engine.submit(prompt, Sampling(max_tokens=30, stop=(stop, "nowhere-in-text")),
                            on_event=lambda event: pieces.append(event.text))
    engine.run([request])
    assert request.finish_reason == "stop"
    assert request.text == "".join(pieces) == free.text[:first]


def test_stop_ids_end_without_the_token_and_max_tokens_gives_length():
    model = _model("tiny-llama")
    prompt = _prompts(1)[0]
    free = Engine(model, lambda ids: "").generate([prompt], Sampling(max_tokens=10))[0].generated
    stopped = Engine(model, lambda ids: "", stop_ids=[free[6]]).generate([prompt], Sampling(max_tokens=10))[0]
    assert stopped.generated == free[:free.index(free[6])] and stopped.finish_reason == "stop"
    per_request = Engine(model, lambda ids: "").generate([prompt], Sampling(max_tokens=10, stop_ids=(free[6],)))[0]
    assert per_request.generated == stopped.generated
    scored = Engine(model, lambda ids: "").generate([prompt], Sampling(max_tokens=0, prompt_logprobs=True))[0]
    assert scored.generated == [] and scored.finish_reason == "length" and len(scored.prompt_logprobs) == len(prompt)


def test_context_end_and_bad_prompts():
    model = _model("tiny-llama")  # context 128
    engine = Engine(model, lambda ids: "", max_length=40)
    request = engine.generate([list(range(1, 36))], Sampling(max_tokens=100))[0]
    assert request.finish_reason == "length" and len(request.generated) == 5
    with pytest.raises(Exception, match="at most 39 fit"):
        engine.submit(list(range(1, 41)), Sampling())
    with pytest.raises(Exception, match="at least one token"):
        engine.submit([], Sampling())


def test_cancel_frees_the_slot_for_the_next_request():
    model = _model("tiny-llama")
    prompts = _prompts(2)
    engine = Engine(model, lambda ids: "", max_batch=1)
    first = engine.submit(prompts[0], Sampling(max_tokens=50))
    second = engine.submit(prompts[1], Sampling(max_tokens=8))
    engine.step()
    engine.cancel(first)
    engine.run([second])
    assert first.finish_reason == "cancelled" and len(first.generated) == 1
    assert second.generated == _greedy_without_cache(model, prompts[1], 8)


def test_prefix_tuned_model_decodes_with_its_prefix():
    from lmforge.peft.prefix import PrefixConfig, apply_prefix

    model = _model("tiny-llama")
    apply_prefix(model, PrefixConfig(length=4))
    prompts = _prompts(3)
    together = Engine(model, lambda ids: "", max_batch=3).generate(prompts, Sampling(max_tokens=10))
    for request, prompt in zip(together, prompts):
        assert request.generated == _greedy_without_cache(model, prompt, 10)


def _compiled_and_eager(model: Transformer, prompts: list[list[int]], lengths: list[int], max_batch: int,
                        max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy tokens of the same requests (the last ones submitted mid-way) from an eager engine and
    from one whose decode step is compiled."""
    results = []
    for compile in (False, True):
        engine = Engine(model, lambda ids: "", max_batch=max_batch, max_length=max_length, compile=compile)
        requests = [engine.submit(prompt, Sampling(max_tokens=length)) for prompt, length in zip(prompts[:2], lengths)]
        for _ in range(3):
            engine.step()
        requests += [engine.submit(prompt, Sampling(max_tokens=length)) for prompt, length in zip(prompts[2:], lengths[2:])]
        engine.run(requests)
        results.append([request.generated for request in requests])
    return results[0], results[1]


def test_compiled_decode_step_gives_the_eager_tokens():
    """`compile=True`: one graph a step (no graph break, w8a8's integer matmuls included), the
    cache's whole capacity under a mask; in fp32 exactly the eager engine's greedy tokens."""
    from torch._dynamo.utils import counters

    from lmforge.quant.apply import quantize_model
    from lmforge.quant.schemes import QuantScheme

    model = _model("tiny-llama")
    prompts = _prompts(2)
    eager, compiled = _compiled_and_eager(model, prompts, [30, 12], max_batch=1, max_length=64)
    assert compiled == eager and [len(tokens) for tokens in eager] == [30, 12]

    for scheme in (QuantScheme("int8", activations="int8"), QuantScheme("int4", 32)):  # lmforge's kernels in the graph
        quantized = _model("tiny-llama")
        quantize_model(quantized, scheme, output=True)
        torch._dynamo.reset()
        counters.clear()
        engine = Engine(quantized, lambda ids: "", max_batch=1, max_length=64, compile=True)
        (request,) = engine.generate(prompts[:1], Sampling(max_tokens=4))
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
        eager = Engine(quantized, lambda ids: "", max_batch=1, max_length=64).generate(prompts[:1], Sampling(max_tokens=4))
        assert request.generated == eager[0].generated


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_compiled_decode_step_batches_and_grows_its_cache(name):
    """Rows joining and leaving (the batch size changes), sliding windows, MLA, and a sequence that
    outgrows the cache's first capacity (256 positions): the compiled step's tokens are the eager's."""
    model = _model(name)
    prompts = _prompts(5)
    eager, compiled = _compiled_and_eager(model, prompts, [5, 280, 12, 3, 22], max_batch=3, max_length=320)
    assert compiled == eager
