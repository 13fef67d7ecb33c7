"""`lmforge serve` through the official `openai` client: the same tokens as the engine in-process,
usage counted by the tokenizer, stops, seeds, log-probabilities, streaming; and every bad request a
4xx in OpenAI's error shape while the server keeps serving."""

from __future__ import annotations

import json

import openai
import pytest
import requests
import torch

from lmforge.infer.engine import Sampling

PROMPT = "The cat sat on"


def _reference(served, prompt_ids: list[int], **sampling) -> object:
    """The same request decoded by an engine of this process."""
    return served.loaded.engine(max_batch=1).generate([prompt_ids], Sampling(**sampling))[0]


def test_models_health_and_api_key(served, client):
    assert [model.id for model in client.models.list().data] == ["tiny"]
    assert requests.get(served.url + "/health").json()["status"] == "ok"  # no key needed
    for key in ("wrong", None):
        response = requests.get(served.url + "/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_greedy_completion_equals_the_engine_and_counts_usage(served, client):
    prompt_ids = served.loaded.encode(PROMPT)
    expected = _reference(served, prompt_ids, max_tokens=20)
    response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    choice = response.choices[0]
    assert choice.text == expected.text and choice.finish_reason == expected.finish_reason
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(expected.generated)
    assert response.usage.total_tokens == len(prompt_ids) + len(expected.generated)


def test_stop_sequences_cut_the_text(served, client):
    text = _reference(served, served.loaded.encode(PROMPT), max_tokens=30).text
    stop = next(text[start:start + 2] for start in range(4, len(text)) if text[start:start + 2].strip())
    response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "zzzz"])
    assert response.choices[0].text == text[:text.find(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_seeds_repeat_and_n_gives_that_many_choices(client):
    def sample(seed: int, n: int = 1) -> list[str]:
        response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=1.0, seed=seed, n=n)
        return [choice.text for choice in sorted(response.choices, key=lambda choice: choice.index)]

    assert sample(5) == sample(5) != sample(6)
    three = sample(5, n=3)
    assert len(three) == 3 and three[0] == sample(5)[0] and len(set(three)) > 1


def test_echo_log_probabilities_equal_the_forward_pass(served, client):
    """What lm-evaluation-harness's local-completions model asks: token ids, echo, logprobs, 1 new token."""
    ids = served.loaded.tokenizer.encode("A dog ran under the red rug")
    response = client.completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    with torch.no_grad():
        log_probs = served.loaded.model(torch.tensor([ids]))[0].log_softmax(-1)
    expected = log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(torch.tensor(logprobs.token_logprobs[1:-1]), expected, atol=1e-5, rtol=0)
    assert max(logprobs.top_logprobs[-1].values()) == logprobs.token_logprobs[-1]  # greedy: the top token
    assert response.choices[0].text.startswith(served.loaded.tokenizer.decode(ids))


def test_chat_streaming_equals_the_whole_answer(served, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where did the cat sit?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    expected = _reference(served, served.loaded.encode(served.loaded.render(messages)), max_tokens=24)
    assert whole.choices[0].message.content == expected.text and whole.choices[0].message.role == "assistant"
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected.text and finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens == len(expected.generated)
    assert usage.prompt_tokens == len(served.loaded.encode(served.loaded.render(messages)))


def test_chat_log_probabilities(client):
    response = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                              temperature=0, logprobs=True, top_logprobs=2)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert all(len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob == item.logprob for item in content)


def _post(served, path: str, body, key: str | None = "") -> requests.Response:
    key = served.api_key if key == "" else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(served.url + path, data=content, headers=headers, timeout=60)


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ("[1, 2]", 400, None),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "elsewhere", "prompt": "x"}, 404, "model"),
    ({"model": "tiny", "prompt": "cat " * 400}, 400, "prompt"),
    ({"model": "tiny", "prompt": [5, 10**6]}, 400, "prompt"),
    ({"prompt": "x"}, 400, "model"),
])
def test_bad_completion_requests_get_a_4xx_in_openai_shape(served, body, status, param):
    response = _post(served, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
    assert _post(served, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}).status_code == 200


def test_bad_chat_requests_and_limits(served):
    assert _post(served, "/v1/chat/completions", {"model": "tiny", "messages": []}).status_code == 400
    assert _post(served, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}).status_code == 400
    assert _post(served, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
                 key=None).status_code == 401
    assert _post(served, "/v1/completions", "x" * (2 << 20)).status_code == 413
    settings = served.settings
    settings.max_queue = 0
    try:
        response = _post(served, "/v1/completions", {"model": "tiny", "prompt": "x"})
        assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
    finally:
        settings.max_queue = 64
    settings.request_timeout = 1e-6
    try:
        assert _post(served, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 50}).status_code == 408
        streamed = _post(served, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                          "max_tokens": 50, "stream": True})
        events = [line[len("data: "):] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "timeout"
    finally:
        settings.request_timeout = 600.0
    assert _post(served, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                   "max_tokens": 3}).status_code == 200


def test_tokenizer_routes(served):
    ids = _post(served, "/tokenize", {"prompt": "The cat", "add_special_tokens": False}).json()["tokens"]
    assert ids == served.loaded.tokenizer.encode("The cat")
    assert _post(served, "/detokenize", {"tokens": ids}).json()["prompt"] == "The cat"
    assert _post(served, "/detokenize", {"tokens": [10**7]}).status_code == 400


def test_grounded_chat_carries_checked_citations(grounded_served):
    from openai import OpenAI

    client = OpenAI(base_url=grounded_served.url + "/v1", api_key=grounded_served.api_key, max_retries=0)
    question = [{"role": "user", "content": "Where did the cat sit?"}]
    response = client.chat.completions.create(model="tiny", messages=question, max_tokens=4, temperature=0)
    message = response.choices[0].message.model_dump()
    assert set(message) >= {"citations", "invalid_citations", "grounded"}
    assert message["grounded"] == bool(message["citations"])
    # The prompt held the passages: more tokens than the question alone.
    plain = grounded_served.loaded.encode(grounded_served.loaded.render(question))
    assert response.usage.prompt_tokens > len(plain) + 10
    chunks = list(client.chat.completions.create(model="tiny", messages=question, max_tokens=4, temperature=0, stream=True))
    last_delta = chunks[-1].choices[0].delta.model_dump()
    assert last_delta["grounded"] == message["grounded"] and last_delta["citations"] == message["citations"]


def test_serve_command_end_to_end(served, port):
    """`lmforge serve` in its own process, the key from the environment; a second server on the
    same port is refused with one line; Ctrl-C (SIGINT) stops the first cleanly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from openai import OpenAI

    environment = {**os.environ, "LMFORGE_API_KEY": "from-environment"}
    command = [sys.executable, "-m", "lmforge", "serve", str(served.checkpoint), "--port", str(port), "--device", "cpu",
               "--model-name", "mine"]
    server = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="from-environment", max_retries=0)
        answer = client.chat.completions.create(model="mine", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert answer.usage.completion_tokens <= 3 and answer.model == "mine"
        second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "cannot listen there" in second.stderr and "Traceback" not in second.stderr
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    assert "Traceback" not in stderr and f"at http://127.0.0.1:{port}/v1 (API key required)" in stderr

