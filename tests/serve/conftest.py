"""A server on a free local port, in this process: uvicorn in a thread, the engine in another."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from lmforge.infer.loaded import load_for_inference
from lmforge.model.checkpoint_directory import save_checkpoint
from lmforge.model.presets import preset_config
from lmforge.model.transformer import Transformer
from lmforge.serve.app import ServeSettings, build_app
from lmforge.tokenizer import train_tokenizer

API_KEY = "test-key"
TEXTS = ["The cat sat on the mat because it was warm.", "A dog ran under the red rug quickly.",
         "人民日报 报道 了 新 的 消息。", "def add(a, b): return a + b"] * 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


def tiny_checkpoint(root, context_length: int = 192):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.save(root / "tokenizer.json")
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny-llama"), vocab_size=tokenizer.vocab_size, context_length=context_length)
    save_checkpoint(Transformer(config), root / "tiny", tokenizer=root / "tokenizer.json")
    return root / "tiny"


def start_server(checkpoint, settings: ServeSettings, grounding=None, max_batch: int = 4) -> SimpleNamespace:
    import uvicorn

    loaded = load_for_inference(checkpoint, "cpu", "fp32")
    app = build_app(loaded, loaded.engine(max_batch=max_batch), settings, grounding)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return SimpleNamespace(url=f"http://127.0.0.1:{port}", loaded=loaded, settings=settings, server=server, thread=thread)


def stop_server(running: SimpleNamespace) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("serve"))
    running = start_server(checkpoint, ServeSettings(api_key=API_KEY, model_name="tiny", max_tokens_limit=150))
    running.checkpoint, running.api_key = checkpoint, API_KEY
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def grounded_served(tmp_path_factory):
    """A checkpoint with room for passages (a 512-token context), served with a BM25 index of three documents."""
    from lmforge.infer.grounded import Grounding
    from lmforge.retrieval import BM25Index

    root = tmp_path_factory.mktemp("grounded")
    directory = root / "idx"
    documents = {"cats": "The cat sat on the mat.", "dogs": "A dog ran under the rug.", "news": "人民日报 报道 了 消息。"}
    BM25Index.build(list(documents.values()), ids=list(documents)).save(directory)
    running = start_server(tiny_checkpoint(root, context_length=512), ServeSettings(api_key=API_KEY, model_name="tiny"),
                           grounding=Grounding.open(directory, top=2, budget=40))
    running.api_key = API_KEY
    yield running
    stop_server(running)
