"""A multi-turn conversation with a checkpoint: its chat template, a history trimmed to fit the
context (the system message and the latest turns are kept), answers streamed from the engine and
interruptible, and — with a BM25 index — grounded in retrieved passages with checked citations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.infer.engine import Engine, Sampling
from lmforge.infer.grounded import Grounding
from lmforge.infer.loaded import InferenceModel


@dataclass
class Reply:
    text: str
    finish_reason: str  # stop, length, or interrupted (Ctrl-C)
    dropped_turns: int = 0  # earlier exchanges left out so the prompt fits
    grounding: dict = field(default_factory=dict)  # citations, invalid_citations, grounded (with an index)


class Conversation:
    def __init__(self, loaded: InferenceModel, engine: Engine, *, system: str | None = None,
                 grounding: Grounding | None = None, max_tokens: int = 512, temperature: float = 0.7,
                 top_p: float | None = 0.95, seed: int | None = None) -> None:
        self.loaded, self.engine, self.grounding = loaded, engine, grounding
        self.system = system
        self.history: list[dict] = []  # user and assistant turns, as said (without retrieved passages)
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        # Room kept for the answer when the history is trimmed: a long history must not leave none.
        self.answer_room = max(1, min(max_tokens, engine.prompt_room // 4))

    def reset(self) -> None:
        self.history = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def _prompt(self, turns: list[dict]) -> list[int]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
        return self.loaded.encode(self.loaded.render(messages))

    def fit(self, turns: list[dict]) -> tuple[list[int], int]:
        """The prompt's ids for the system message and as many of the latest turns as fit, and the
        number of earlier exchanges (user + assistant) left out."""
        limit = self.engine.prompt_room - self.answer_room
        dropped = 0
        while True:
            ids = self._prompt(turns)
            if len(ids) <= limit:
                return ids, dropped
            if len(turns) <= 1:
                raise LmforgeError(f"the message is too long: the prompt would be {len(ids)} tokens and "
                                   f"{limit} fit with room for an answer; shorten it (or /system)")
            turns = turns[2:]  # the oldest user turn and its answer
            dropped += 1

    def _fits(self, turns: list[dict]) -> bool:
        try:
            self.fit([*self.history, *turns])
        except LmforgeError:
            return False
        return True

    def reply(self, user_text: str, on_text: Callable[[str], None] = lambda text: None) -> Reply:
        """Answer `user_text`, streaming the answer's text to `on_text`. A KeyboardInterrupt while
        it runs stops the answer (kept as far as it got) and not the conversation."""
        turn = {"role": "user", "content": user_text}
        passages, asked = [], turn
        if self.grounding is not None:
            grounded, passages = self.grounding.prepare([turn], self.loaded.tokenizer, self._fits)
            asked = grounded[-1]
        ids, dropped = self.fit([*self.history, asked])
        if dropped:
            self.history = self.history[2 * dropped:]
        sampling = Sampling(max_tokens=min(self.max_tokens, self.engine.max_length - len(ids) - self.engine.prefix_length),
                            temperature=self.temperature, top_p=self.top_p, stop=self.loaded.chat_stops,
                            seed=None if self.seed is None else self.seed + len(self.history) // 2)  # a turn's own draws
        request = self.engine.submit(ids, sampling, on_event=lambda event: on_text(event.text) if event.text else None)
        try:
            self.engine.run([request])
            finish = request.finish_reason
        except KeyboardInterrupt:
            self.engine.cancel(request)
            self.engine.step()  # lets the request go and frees its slot
            finish = "interrupted"
        answer = request.text
        self.history += [turn, {"role": "assistant", "content": answer}]
        return Reply(answer, finish, dropped, self.grounding.cite(answer, passages) if self.grounding is not None else {})
