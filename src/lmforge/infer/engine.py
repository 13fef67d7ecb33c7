"""The decoding engine: many sequences decode together, one forward pass a step (continuous batching).

Each running sequence owns a slot of the KV cache and sits at its own position. A new sequence
joins when a slot is free: its prompt runs alone (so its tokens never depend on its neighbours'
lengths), then it decodes with the others, one token a step; a finished sequence leaves at once
and the last slot moves into its place, so the running sequences always fill slots 0..n-1 and a
step reads the cache without gathering. `generate`, `chat`, `eval` and `serve` all decode here.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lmforge.errors import LmforgeError
from lmforge.infer.sampling import sample_next
from lmforge.model.kv_cache import Slots
from lmforge.model.transformer import Transformer
from lmforge.quant import native
from lmforge.quant.linear import prepare_decode_kernels, use_native_linears


@dataclass(frozen=True)
class Sampling:
    """How one request decodes. Temperature 0 is greedy; `logprobs` asks for each chosen token's
    log-probability and that many top alternatives (0: the chosen token's only)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()  # in addition to the engine's (EOS, end of turn)
    logprobs: int | None = None
    prompt_logprobs: bool = False  # each prompt token's log-probability given those before it (echo)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one step did for a sequence: a new token (its text may be held back while it could be
    the start of a stop string) and, on its last step, why it finished."""

    sequence: Request
    token_id: int | None
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error"


class Request:
    """One sequence's state in the engine."""

    def __init__(self, prompt_ids: Sequence[int], sampling: Sampling, on_event: Callable[[Event], None] | None,
                 device: torch.device) -> None:
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.on_event = on_event
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] = []
        self.text = ""  # the generated text, cut at a stop string
        self.sent = 0  # characters of `text` handed out in events
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancelled = False
        self.slot = -1
        self.position = 0  # where the next token's key goes
        self.next_token: int | None = None  # sampled, not yet run through the model
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine:
    """Decodes requests `max_batch` at a time on `model`, in slots of up to `max_length` positions."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], *, vocab_size: int | None = None,
                 stop_ids: Sequence[int] = (), max_batch: int = 8, max_length: int | None = None,
                 compile: bool = False) -> None:
        """With `compile`, the decode step runs as one `torch.compile`d graph (prompts stay eager):
        its first steps compile (tens of seconds on a CPU, again when the cache doubles), and every
        step after costs a fraction of the Python overhead of the eager one."""
        self.model = model
        self.decode = decode
        self.vocab_size = vocab_size or model.config.vocab_size
        self.stop_ids = frozenset(stop_ids)
        self.max_batch = max_batch
        self.max_length = min(max_length or model.config.context_length, model.config.context_length)
        self.device = model.token_embedding.weight.device
        self.prefix = getattr(model, "prefix", None)  # prefix tuning: every slot starts with it
        self.prefix_length = self.prefix.length if self.prefix is not None else 0
        if self.prefix_length >= self.max_length:
            raise LmforgeError(f"the {self.prefix_length}-position prefix leaves no room in {self.max_length} positions")
        # A decode step's few rows go to lmforge's kernels (`NativeLinear`), faster than PyTorch's
        # GEMVs on a CPU; the model's layers stay what they are for anything else.
        self.native = self.device.type == "cpu" and use_native_linears(model) > 0
        self.slots = Slots()
        self.caches = model.new_cache(max_batch, self.max_length, slots=self.slots)
        self.running: list[Request] = []
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.closed = False
        # On a CPU the graph's own kernels run from C++ too (`cpp_wrapper`): a step of small
        # kernels is otherwise bound by Python launching them.
        options = {"cpp_wrapper": True} if self.device.type == "cpu" else None
        self._compiled_step = torch.compile(self._last_logits, options=options) if compile else None
        self._prepared = False

    @property
    def prompt_room(self) -> int:
        """The longest prompt a request may have (one position is left for the first new token)."""
        return self.max_length - self.prefix_length - 1

    def submit(self, prompt_ids: Sequence[int], sampling: Sampling, on_event: Callable[[Event], None] | None = None) -> Request:
        """Queue a request; thread-safe. `on_event` is called from the thread running `step`."""
        if not prompt_ids:
            raise LmforgeError("the prompt must hold at least one token")
        if len(prompt_ids) > self.prompt_room:
            raise LmforgeError(f"the prompt is {len(prompt_ids)} tokens; at most {self.prompt_room} fit "
                               f"the engine's {self.max_length} positions with room for an answer")
        request = Request(prompt_ids, sampling, on_event, self.device)
        with self.lock:
            self.waiting.append(request)
            self.lock.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request at the next step; thread-safe."""
        request.cancelled = True
        with self.lock:
            self.lock.notify()

    def pending(self) -> int:
        """Requests waiting or running."""
        return len(self.waiting) + len(self.running)

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit waiting requests into free slots, decode one token for every running request, and
        let the finished ones leave."""
        events: list[Event] = []
        with self.lock:
            for request in [*self.waiting, *self.running]:
                if request.cancelled and not request.finished:
                    request.finish_reason = "cancelled"
                    events.append(Event(request, None, "", finish_reason="cancelled"))
            self.waiting = deque(request for request in self.waiting if not request.finished)
            joining = []
            while self.waiting and len(self.running) + len(joining) < self.max_batch:
                joining.append(self.waiting.popleft())
        decoding = [request for request in self.running if not request.finished]
        if decoding:
            with _weight_first_linear(self.device, len(decoding) if self._compiled_step is None else 1,
                                      native.MAX_ROWS if self.native else 0):
                events += self._decode(decoding)
        _dispatch(events)  # running streams are not held up by the prompts joining below
        joined = []
        for request in joining:
            request.slot = len(self.running)
            self.running.append(request)
            joined.append(self._prefill(request))
        _dispatch(joined)
        self._release([request for request in self.running if request.finished])
        return events + joined

    def fail_all(self, message: str) -> None:
        """End every request with an error (the step raised): the engine stays usable."""
        with self.lock:
            failed = [*self.running, *self.waiting]
            self.waiting.clear()
        self.running = []
        for request in failed:
            if not request.finished:
                request.finish_reason, request.error = "error", message
                if request.on_event is not None:
                    request.on_event(Event(request, None, "", finish_reason="error"))

    def run(self, requests: Sequence[Request]) -> None:
        """Step until every one of `requests` has finished (offline use: generate, eval)."""
        while not all(request.finished for request in requests):
            self.step()

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> list[Request]:
        """Decode every prompt, `max_batch` at a time; the finished requests in prompt order."""
        requests = [self.submit(prompt, sampling) for prompt in prompts]
        self.run(requests)
        return requests

    def serve_forever(self) -> None:
        """Step whenever there is work, until `close`; run it in a thread of its own (`serve`)."""
        while True:
            with self.lock:
                while not self.closed and not self.waiting and not self.running:
                    self.lock.wait()
                if self.closed:
                    return
            try:
                self.step()
            except Exception as error:  # a bad step must not take the server down: its requests fail
                self.fail_all(f"decoding failed: {type(error).__name__}: {error}")

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def _forward(self, tokens: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        positions = self.slots.set(rows, starts, tokens.shape[1])
        return self.model(tokens, self.caches, positions=positions, hidden_states=True)

    def _prefill(self, request: Request) -> Event:
        if self.prefix is not None:
            for layer, cache in enumerate(self.caches):
                cache.write(request.slot, *(tensor.to(cache.buffers[0].dtype) for tensor in self.prefix.layer(layer)))
        prompt = torch.tensor([request.prompt_ids], device=self.device)
        hidden = self._forward(prompt, torch.tensor([request.slot], device=self.device),
                               torch.tensor([self.prefix_length], device=self.device))[0]
        request.position = self.prefix_length + len(request.prompt_ids)
        if request.sampling.prompt_logprobs:
            log_probs = self._log_probs(self.model.lm_head(hidden[:-1]))
            request.prompt_logprobs = [None] + [self._token_logprob(row, token, request.sampling.logprobs)
                                                for row, token in zip(log_probs, request.prompt_ids[1:])]
        if request.sampling.max_tokens <= 0:  # scoring the prompt only (echo)
            request.finish_reason = "length"
            return Event(request, None, "", finish_reason="length")
        return self._advance(request, self.model.lm_head(hidden[-1:]))

    def _last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The logits [batch, vocab] after the last of `tokens`, at the positions `slots` holds."""
        return self.model.lm_head(self.model(tokens, self.caches, positions=self.slots.positions, hidden_states=True)[:, -1])

    def _decode(self, requests: list[Request]) -> list[Event]:
        tokens = torch.tensor([[request.next_token] for request in requests], device=self.device)
        rows = torch.tensor([request.slot for request in requests], device=self.device)
        starts = torch.tensor([request.position for request in requests], device=self.device)
        self.slots.set(rows, starts, 1)
        if self._compiled_step is not None and self.slots.contiguous:
            for cache in self.caches:
                cache.reserve(self.slots.key_length)
            self.slots.static = True
            if not self._prepared:  # the integer kernels' weights are made outside the graph
                prepare_decode_kernels(self.model)
                self._prepared = True
            try:
                logits = self._compiled_step(tokens)
            finally:
                self.slots.static = False
        else:
            logits = self._last_logits(tokens)
        events = []
        for index, request in enumerate(requests):
            request.position += 1
            events.append(self._advance(request, logits[index:index + 1]))
        return events

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., :self.vocab_size].float().log_softmax(dim=-1)

    @staticmethod
    def _token_logprob(log_probs: torch.Tensor, token_id: int, top: int | None) -> TokenLogprob:
        alternatives = []
        if top:
            values, ids = log_probs.topk(min(top, log_probs.shape[-1]))
            alternatives = list(zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token_id, float(log_probs[token_id]), alternatives)

    def _advance(self, request: Request, logits: torch.Tensor) -> Event:
        """Choose the request's next token from its logits [1, vocab] and decide whether it is done."""
        sampling = request.sampling
        token = int(sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, request.generator,
                                self.vocab_size)[0])
        logprob = None
        if sampling.logprobs is not None:
            logprob = self._token_logprob(self._log_probs(logits[0]), token, sampling.logprobs)
        if token in self.stop_ids or token in sampling.stop_ids:
            request.finish_reason = "stop"
            return Event(request, None, self._take_text(request, final=True), finish_reason="stop")
        request.generated.append(token)
        if logprob is not None:
            request.logprobs.append(logprob)
        request.next_token = token
        text = self.decode(request.generated)
        cut = _first_stop(text, sampling.stop, max(0, request.sent - _longest(sampling.stop)))
        if cut is not None:
            request.text, request.finish_reason = text[:cut], "stop"
        else:
            request.text = text
            if len(request.generated) >= sampling.max_tokens or request.position + 1 >= self.max_length:
                request.finish_reason = "length"
        return Event(request, token, self._take_text(request, final=request.finished), logprob, request.finish_reason)

    @staticmethod
    def _take_text(request: Request, final: bool) -> str:
        """The text not yet handed out, less a tail that may still grow into a stop string or into a
        whole UTF-8 character (byte-level tokens split characters)."""
        text = request.text
        end = len(text)
        if not final:
            end -= _held_back(text, request.sampling.stop)
            if text.endswith("\ufffd"):
                end = min(end, len(text.rstrip("\ufffd")))
        if end <= request.sent:
            return ""
        piece, request.sent = text[request.sent:end], end
        return piece

    def _release(self, finished: list[Request]) -> None:
        """Finished requests leave; the last running request moves into each freed slot."""
        for request in finished:
            slot = request.slot
            last = self.running.pop()
            if last is not request:
                for cache in self.caches:
                    cache.move(last.slot, slot, last.position)
                last.slot = slot
                self.running[slot] = last
            request.slot = -1


def _dispatch(events: list[Event]) -> None:
    for event in events:
        if event.sequence.on_event is not None:
            event.sequence.on_event(event)


class _WeightFirst(TorchFunctionMode):
    """Linear layers as (W · xᵀ)ᵀ: the same product, but the layout MKL multiplies fastest on some
    CPUs (3× on AMD Zen for decode-sized batches: x · Wᵀ takes a slow path there)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.dim() == 2 and x.dtype == weight.dtype == torch.float32:
                out = (weight @ x.reshape(-1, x.shape[-1]).t()).t().reshape(*x.shape[:-1], weight.shape[0])
                return out if bias is None else out + bias
        return func(*args, **kwargs)


def _weight_first_linear(device: torch.device, rows: int, native_rows: int):
    """For a decode step of several rows on the CPU, more than lmforge's kernels take (`native_rows`,
    0 where they are not used). One row (a GEMV) gains nothing, and a mode costs every torch call
    a Python round trip: 15 µs, a tenth of a small model's step."""
    return _WeightFirst() if device.type == "cpu" and rows > max(1, native_rows) else contextlib.nullcontext()


def _longest(stops: Sequence[str]) -> int:
    return max(map(len, stops), default=0)


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    """Where the earliest stop string begins in `text` (searching from `start`), or None."""
    found = [index for stop in stops if stop and (index := text.find(stop, start)) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is the start of a stop string."""
    for length in range(min(len(text), _longest(stops) - 1), 0, -1):
        tail = text[-length:]
        if any(stop.startswith(tail) for stop in stops):
            return length
    return 0
