"""`lmforge serve`: an OpenAI-compatible HTTP server for a checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError

API_KEY_VARIABLE = "LMFORGE_API_KEY"


def serve(
    checkpoint: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    index: Path | None = None,
    model_name: str | None = None,
    max_batch: int = 8,
    max_context: int | None = None,
    max_queue: int = 64,
    max_tokens_limit: int = 4096,
    max_body_bytes: int = 1 << 20,
    request_timeout: float = 600.0,
    top_passages: int = 4,
    passage_budget: int = 1024,
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    compile: bool = False,
) -> None:
    """Serve a checkpoint over HTTP with OpenAI's API: any OpenAI client, lm-evaluation-harness's
    local-completions model or curl can use it. Concurrent requests decode together (continuous
    batching). Bound to 127.0.0.1 unless --host says otherwise.

    Routes: GET /v1/models; POST /v1/completions (prompt as text or token ids; max_tokens,
    temperature, top_p, top_k, stop, seed, n, logprobs, echo, stream); POST /v1/chat/completions
    (messages through the checkpoint's chat template; the same fields, logprobs/top_logprobs, stream
    with stream_options.include_usage); GET /health (no key needed); vLLM's /tokenize, /detokenize
    and /tokenizer_info. With --index, each chat answer is grounded in the top passages of a BM25
    index: the message carries `citations` (passage, document, span, score) and `grounded`.

    Example:
        lmforge serve runs/quickstart
        lmforge serve runs/chat --port 8080 --api-key secret --max-batch 16
        LMFORGE_API_KEY=secret lmforge serve runs/chat --host 0.0.0.0
        lmforge serve runs/chat --index docs-idx --top-passages 3
        curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
            -d '{"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}'

    Args:
        checkpoint: An lmforge checkpoint directory (with tokenizer.json; generation.json's chat template).
        host: Address to listen on (0.0.0.0: every interface; give --api-key then).
        port: TCP port.
        api_key: Require `Authorization: Bearer KEY` on every route but /health (default: the
            LMFORGE_API_KEY environment variable; none: no key needed).
        index: A BM25 index directory (`lmforge bm25 index`) to ground chat answers in.
        model_name: The model id clients send (default: the checkpoint directory's name).
        max_batch: Requests decoded together, each in a KV-cache slot.
        max_context: Positions per slot (default: the model's context length).
        max_queue: Requests queued or decoding at once; more are answered 429.
        max_tokens_limit: The most new tokens one request may ask for (400 above it).
        max_body_bytes: Largest request body (413 above it).
        request_timeout: Seconds a request may take, queueing included (408 after it).
        top_passages: With --index: passages put before each question.
        passage_budget: With --index: the most tokens those passages may take.
        device: auto, cpu, cuda, cuda:N.
        precision: Weights' dtype: auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16.
        compile: Run each decode step as one compiled graph (torch.compile): the first steps
            compile (about a minute on a CPU, less when its cache is warm), every later step is
            faster; worth it for long outputs and sessions.
    """
    from lmforge.bounds import at_least, between, check_value

    check_value("--port", port, between(1, 65535))
    for name, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--max-tokens-limit", max_tokens_limit), ("--max-body-bytes", max_body_bytes),
                        ("--top-passages", top_passages), ("--passage-budget", passage_budget)):
        check_value(name, value, at_least(1))
    check_value("--max-context", max_context, at_least(2))
    check_value("--request-timeout", request_timeout, at_least(0.001))
    _check_address(host, port)
    import uvicorn

    from lmforge.infer.grounded import Grounding
    from lmforge.infer.loaded import load_for_inference
    from lmforge.serve.app import ServeSettings, build_app

    grounding = Grounding.open(index, top_passages, passage_budget) if index is not None else None
    loaded = load_for_inference(checkpoint, device, precision)
    engine = loaded.engine(max_batch=max_batch, max_length=max_context, compile=compile)
    settings = ServeSettings(api_key=api_key or os.environ.get(API_KEY_VARIABLE) or None,
                             model_name=model_name or loaded.name, max_body_bytes=max_body_bytes, max_queue=max_queue,
                             max_tokens_limit=max_tokens_limit, request_timeout=request_timeout)
    app = build_app(loaded, engine, settings, grounding)
    key = "API key required" if settings.api_key else "no API key"
    print(f"serving '{settings.model_name}' ({loaded.model.config.n_layers} layers, {next(loaded.model.parameters()).dtype}, "
          f"{max_batch} slots of {engine.max_length} positions) at http://{host}:{port}/v1 ({key})", file=sys.stderr)
    if loaded.template_note:
        print(f"chat: {loaded.template_note}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_address(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be listened on (a port in use)."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except (OSError, UnicodeError) as error:  # in use, no such address, not a host name
        raise LmforgeError(f"--host {host} --port {port}: cannot listen there: {error.strerror or error}") from None
