"""The HTTP edge: OpenAI-compatible routes over the decoding engine, which runs in a thread of its
own so that every request's tokens come from shared forward passes (continuous batching).

Every failure a client can cause is a 4xx in OpenAI's error shape, `{"error": {message, type,
param, code}}`; an error in the middle of a stream is sent as such an event before `[DONE]`; the
server keeps serving whatever a request does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from lmforge.errors import LmforgeError
from lmforge.infer.engine import Engine, Event, Request, Sampling
from lmforge.infer.loaded import InferenceModel
from lmforge.serve.protocol import (
    ApiError,
    ChatBody,
    CompletionBody,
    chat_logprobs,
    completion_logprobs,
    envelope,
    error_event,
    new_id,
    usage,
)


@dataclass
class ServeSettings:
    """Limits that protect the machine; every one is a `lmforge serve` option."""

    api_key: str | None = None
    model_name: str = "lmforge"
    max_body_bytes: int = 1 << 20
    max_queue: int = 64  # requests waiting or decoding; more get a 429
    max_tokens_limit: int = 4096  # the most new tokens one request may ask for
    request_timeout: float = 600.0  # seconds from arrival to the last token


class _Generation:
    """Some requests in the engine, their events handed from the engine's thread to the event loop."""

    def __init__(self, engine: Engine, items: list[tuple[list[int], Sampling]], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.engine, self.deadline = engine, time.monotonic() + timeout
        self.requests: list[Request] = []
        try:
            for ids, sampling in items:
                self.requests.append(engine.submit(ids, sampling, lambda event: loop.call_soon_threadsafe(self.queue.put_nowait, event)))
        except LmforgeError as error:
            self.cancel()
            raise ApiError(400, str(error), param="prompt", code="context_length_exceeded") from None
        self.index = {id(request): number for number, request in enumerate(self.requests)}

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(request number, event) until every request has finished; a timeout or an engine error raises."""
        remaining = len(self.requests)
        while remaining:
            try:
                event = await asyncio.wait_for(self.queue.get(), max(0.0, self.deadline - time.monotonic()))
            except TimeoutError:
                self.cancel()
                raise ApiError(408, "the request ran past the server's time limit (--request-timeout)", code="timeout") from None
            if event.finish_reason == "error":
                self.cancel()
                raise ApiError(500, event.sequence.error or "decoding failed", kind="server_error")
            if event.finish_reason is not None:
                remaining -= 1
            yield self.index[id(event.sequence)], event

    async def finish(self) -> None:
        async for _ in self.events():
            pass

    def cancel(self) -> None:
        for request in self.requests:
            if not request.finished:
                self.engine.cancel(request)


def build_app(loaded: InferenceModel, engine: Engine, settings: ServeSettings, grounding=None) -> FastAPI:
    """The FastAPI application; the engine's thread starts and stops with it."""
    tokenizer = loaded.tokenizer

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = threading.Thread(target=engine.serve_forever, name="lmforge-engine", daemon=True)
        worker.start()
        yield
        engine.close()
        worker.join(timeout=10)

    app = FastAPI(title="lmforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: HttpRequest, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error(error.errors()).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, error: HTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return JSONResponse(ApiError(error.status_code, str(error.detail), code=code).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: HttpRequest, error: Exception) -> JSONResponse:
        return JSONResponse(ApiError(500, f"{type(error).__name__}: {error}", kind="server_error").body(), status_code=500)

    @app.middleware("http")
    async def guard(request: HttpRequest, call_next: Callable) -> Response:
        """The API key (every route but /health) and the body-size limit, before any route runs."""
        if settings.api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                reason = "no API key given (Authorization: Bearer KEY)" if not given else "the API key is wrong"
                return JSONResponse(ApiError(401, reason, code="invalid_api_key").body(), status_code=401)
        declared = request.headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes
        if not too_big and request.method == "POST" and declared is None:
            too_big = len(await request.body()) > settings.max_body_bytes
        if too_big:
            return JSONResponse(ApiError(413, f"the request body is over {settings.max_body_bytes} bytes (--max-body-bytes)",
                                         code="request_too_large").body(), status_code=413)
        return await call_next(request)

    def check_model(name: str) -> None:
        if name != settings.model_name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{settings.model_name}'",
                           param="model", code="model_not_found")

    def check_room(count: int) -> None:
        if engine.pending() + count > settings.max_queue:
            raise ApiError(429, f"the server is busy: {engine.pending()} requests are queued or decoding "
                                f"(--max-queue {settings.max_queue}); retry later", kind="rate_limit_error",
                           code="queue_full")

    def new_tokens(asked: int | None, prompt_length: int, prompt_param: str, param: str = "max_tokens") -> int:
        """The new-token budget: as asked (checked against the limit and the context) or what fits."""
        room = engine.max_length - engine.prefix_length - prompt_length
        if room < 1:
            raise ApiError(400, f"the prompt is {prompt_length} tokens; this server's context holds "
                                f"{engine.max_length - engine.prefix_length}", param=prompt_param, code="context_length_exceeded")
        if asked is None:
            return min(room, settings.max_tokens_limit)
        if asked > settings.max_tokens_limit:
            raise ApiError(400, f"{param} is {asked}; this server allows at most {settings.max_tokens_limit} "
                                "(--max-tokens-limit)", param=param)
        if asked > room:
            raise ApiError(400, f"the prompt is {prompt_length} tokens and {param} {asked}; together they pass this "
                                f"server's context of {engine.max_length - engine.prefix_length}", param=param,
                           code="context_length_exceeded")
        return asked

    def decode_token(token_id: int) -> str:
        return tokenizer.decode([token_id])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "queued": engine.pending()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "lmforge", "max_model_len": engine.max_length}]}

    # vLLM's tokenizer routes: lm-evaluation-harness's local-completions model tokenizes through them.
    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        names = {token_id: name for name, token_id in tokenizer.special_tokens.items()}
        return {"eos_token": names.get(tokenizer.eos_id), "bos_token": loaded.bos_token or None,
                "chat_template": loaded.chat_template, "model_max_length": engine.max_length}

    @app.post("/tokenize")
    async def tokenize(request: HttpRequest) -> dict:
        body = await _json_object(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt: a string is required", param="prompt")
        ids = loaded.encode(prompt) if body.get("add_special_tokens", True) else tokenizer.encode(prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_length}

    @app.post("/detokenize")
    async def detokenize(request: HttpRequest) -> dict:
        ids = (await _json_object(request)).get("tokens")
        if not isinstance(ids, list) or not all(isinstance(token, int) for token in ids):
            raise ApiError(400, "tokens: a list of token ids is required", param="tokens")
        return {"prompt": tokenizer.decode(check_ids(ids))}

    def check_ids(ids: list[int]) -> list[int]:
        bad = next((token for token in ids if not 0 <= token < tokenizer.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", param="prompt")
        return ids

    def prompt_ids(prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt: empty", param="prompt")
        return [check_ids(item) if isinstance(item, list) else loaded.encode(item) for item in prompt]

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Response:
        body = await _parsed(request, CompletionBody)
        check_model(body.model)
        prompts = prompt_ids(body.prompt)
        if any(not ids for ids in prompts):
            raise ApiError(400, "prompt: a prompt holds no tokens", param="prompt")
        stops = body.stops()
        items = []
        for ids in prompts:
            budget = new_tokens(body.max_tokens, len(ids), "prompt")
            items += [(ids, Sampling(max_tokens=budget, temperature=body.temperature, top_k=body.top_k or None,
                                     top_p=body.top_p, seed=None if body.seed is None else body.seed + choice, stop=stops,
                                     logprobs=body.logprobs, prompt_logprobs=body.echo and body.logprobs is not None))
                      for choice in range(body.n)]
        check_room(len(items))
        generation = _Generation(engine, items, settings.request_timeout)
        identifier, echoed = new_id("cmpl"), [tokenizer.decode(ids) if body.echo else "" for ids in prompts]
        prompt_tokens = sum(map(len, prompts))
        if body.stream:
            async def chunks() -> AsyncIterator[str]:
                sent_echo = set()
                async for number, event in generation.events():
                    text = event.text
                    if number not in sent_echo:
                        sent_echo.add(number)
                        text = echoed[number // body.n] + text
                    if text or event.finish_reason:
                        yield _sse(envelope("text_completion", identifier, settings.model_name, [
                            {"index": number, "text": text, "logprobs": None, "finish_reason": event.finish_reason}]))
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse(envelope("text_completion", identifier, settings.model_name, [],
                                        usage=usage(prompt_tokens, _generated(generation))))

            return _stream(generation, chunks())
        await generation.finish()
        choices = []
        for number, request in enumerate(generation.requests):
            choices.append({"index": number, "text": echoed[number // body.n] + request.text,
                            "logprobs": completion_logprobs(request, decode_token, body.echo) if body.logprobs is not None else None,
                            "finish_reason": request.finish_reason})
        return JSONResponse(envelope("text_completion", identifier, settings.model_name, choices,
                                     usage=usage(prompt_tokens, _generated(generation))))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Response:
        body = await _parsed(request, ChatBody)
        check_model(body.model)
        messages = [{"role": "system" if message.role == "developer" else message.role, "content": message.text()}
                    for message in body.messages]
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens

        def prompt(messages: list[dict]) -> list[int]:
            try:
                return loaded.encode(loaded.render(messages))
            except LmforgeError as error:
                raise ApiError(400, str(error), param="messages") from None

        passages = []
        if grounding is not None and messages[-1]["role"] == "user":
            room = engine.prompt_room + 1 - (asked or 1)  # the passages must leave room for the answer
            messages, passages = grounding.prepare(messages, tokenizer, lambda grounded: len(prompt(grounded)) <= room)
        ids = prompt(messages)
        budget = new_tokens(asked, len(ids), "messages",
                            "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens")
        top = body.top_logprobs or 0 if body.logprobs else None
        sampling = [Sampling(max_tokens=budget, temperature=body.temperature, top_k=body.top_k or None, top_p=body.top_p,
                             seed=None if body.seed is None else body.seed + choice,
                             stop=body.stops() + loaded.chat_stops, logprobs=top) for choice in range(body.n)]
        check_room(body.n)
        generation = _Generation(engine, [(ids, item) for item in sampling], settings.request_timeout)
        identifier = new_id("chatcmpl")

        def grounded_fields(text: str) -> dict:
            return grounding.cite(text, passages) if grounding is not None else {}

        if body.stream:
            async def chunks() -> AsyncIterator[str]:
                for number in range(body.n):
                    yield _sse(envelope("chat.completion.chunk", identifier, settings.model_name, [
                        {"index": number, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}]))
                async for number, event in generation.events():
                    delta = {"content": event.text} if event.text else {}
                    if event.finish_reason is not None:
                        delta.update(grounded_fields(event.sequence.text))
                    logprobs = None
                    if top is not None and event.logprob is not None:
                        logprobs = chat_logprobs([event.logprob], decode_token)
                    if delta or event.finish_reason:
                        yield _sse(envelope("chat.completion.chunk", identifier, settings.model_name, [
                            {"index": number, "delta": delta, "logprobs": logprobs, "finish_reason": event.finish_reason}]))
                if body.stream_options and body.stream_options.include_usage:
                    yield _sse(envelope("chat.completion.chunk", identifier, settings.model_name, [],
                                        usage=usage(len(ids), _generated(generation))))

            return _stream(generation, chunks())
        await generation.finish()
        choices = [{"index": number,
                    "message": {"role": "assistant", "content": request.text, **grounded_fields(request.text)},
                    "logprobs": chat_logprobs(request.logprobs, decode_token) if top is not None else None,
                    "finish_reason": request.finish_reason}
                   for number, request in enumerate(generation.requests)]
        return JSONResponse(envelope("chat.completion", identifier, settings.model_name, choices,
                                     usage=usage(len(ids), _generated(generation))))

    return app


async def _json_object(request: HttpRequest) -> dict:
    """The body as a JSON object, whatever Content-Type the client sent (curl -d sends a form type)."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


async def _parsed(request: HttpRequest, kind: type[BaseModel]):
    try:
        return kind.model_validate(await _json_object(request))
    except ValidationError as error:
        raise _validation_error(error.errors()) from None


def _validation_error(problems: list) -> ApiError:
    """The first problem pydantic found, as OpenAI reports it: the field in `param`."""
    problem = problems[0]
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
    return ApiError(400, f"{where or 'body'}: {problem.get('msg', 'invalid')}", param=where or None, code=problem.get("type"))


def _generated(generation: _Generation) -> int:
    return sum(len(request.generated) for request in generation.requests)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream(generation: _Generation, chunks: AsyncIterator[str]) -> StreamingResponse:
    """Server-sent events ending in `data: [DONE]`; an error becomes an error event; a client that
    goes away cancels its requests."""
    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except ApiError as error:
            yield error_event(error)
        finally:
            generation.cancel()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
