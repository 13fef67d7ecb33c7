"""The OpenAI wire format: request bodies (validated, with the limits that protect the machine)
and the response objects, as the `openai` client and lm-evaluation-harness read them."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmforge.infer.engine import Request, TokenLogprob


class ApiError(Exception):
    """An error the client caused (or a limit it hit): answered with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields this server does not use (user, ...)

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but vLLM's and common
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 stop sequences", param="stop")
        return tuple(stop for stop in stops if stop)


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        """The message's text; a list of parts must be text parts (this model reads no images)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
            raise ApiError(400, "messages: only text content parts are supported", param="messages")
        return "".join(part["text"] for part in self.content)


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, identifier: str, model: str, choices: list[dict], **extra) -> dict:
    return {"id": identifier, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def completion_logprobs(request: Request, decode_token, echo: bool) -> dict:
    """The legacy completions' logprobs object: tokens, token_logprobs, top_logprobs, text_offset
    (with `echo`, the prompt's tokens first; the first has no log-probability)."""
    entries: list[tuple[int, TokenLogprob | None]] = []
    if echo:
        entries += [(token, logprob) for token, logprob in zip(request.prompt_ids, request.prompt_logprobs or
                                                                [None] * len(request.prompt_ids))]
    entries += [(logprob.token_id, logprob) for logprob in request.logprobs]
    tokens, token_logprobs, top_logprobs, offsets, offset = [], [], [], [], 0
    for token_id, logprob in entries:
        text = decode_token(token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        token_logprobs.append(None if logprob is None else logprob.logprob)
        top_logprobs.append(None if logprob is None else {decode_token(alternative): value
                                                            for alternative, value in logprob.top})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def chat_logprobs(logprobs: list[TokenLogprob], decode_token) -> dict:
    """The chat completions' logprobs object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    def entry(token_id: int, value: float) -> dict:
        text = decode_token(token_id)
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(item.token_id, item.logprob),
                         "top_logprobs": [entry(token, value) for token, value in item.top]} for item in logprobs]}


def error_event(error: ApiError) -> str:
    import json

    return f"data: {json.dumps(error.body())}\n\n"
