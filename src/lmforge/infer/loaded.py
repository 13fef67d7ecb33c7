"""A checkpoint ready to talk: the model, its tokenizer, and what `generation.json` says about BOS,
stop tokens and the chat template, read in one place for `generate`, `chat` and `serve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.examples.chat_template import render_chat, chat_template_of, vocabulary_template
from lmforge.errors import LmforgeError
from lmforge.infer.engine import Engine
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.special_ids import special_ids

# The documented fallback for a checkpoint without a chat template or known turn markers (a base
# model pretrained here): plain "User:" / "Assistant:" lines, and the next "User:" line ends a turn.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% else %}{{ ('User: ' if message['role'] == 'user' else 'Assistant: ') + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
PLAIN_STOPS = ("\nUser:",)


@dataclass
class InferenceModel:
    name: str
    model: Transformer
    tokenizer: Tokenizer
    stop_ids: frozenset[int]
    bos_id: int | None
    chat_template: str
    chat_stops: tuple[str, ...] = ()  # stop strings the template needs (the plain fallback's)
    template_note: str | None = None  # how chat reads this checkpoint when it has no template of its own
    bos_token: str = ""
    eos_token: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def encode(self, text: str) -> list[int]:
        """A prompt's ids, with the checkpoint's BOS in front when it asks for one and the text has none."""
        ids = self.tokenizer.encode(text)
        if self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        return ids

    def render(self, messages: list[dict]) -> str:
        """The text the model continues for a conversation: the template with the assistant's turn opened."""
        return render_chat(self.chat_template, messages, add_generation_prompt=True, bos_token=self.bos_token,
                           eos_token=self.eos_token)

    def engine(self, max_batch: int = 8, max_length: int | None = None, compile: bool = False) -> Engine:
        return Engine(self.model, self.tokenizer.decode, vocab_size=self.tokenizer.vocab_size, stop_ids=self.stop_ids,
                      max_batch=max_batch, max_length=max_length, compile=compile)


def load_for_inference(checkpoint: str | Path, device: str = "auto", precision: str = "auto") -> InferenceModel:
    """Read a checkpoint directory for decoding (weights in `precision`, see `runtime.resolve_precision`)."""
    from lmforge.model.checkpoint_directory import TOKENIZER_FILE, read_config, read_generation
    from lmforge.peft import load_finetuned
    from lmforge.runtime import DTYPES, resolve_device, resolve_precision
    from lmforge.tokenizer import load_tokenizer

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise LmforgeError(f"{checkpoint}: no such checkpoint directory")
    if not (checkpoint / TOKENIZER_FILE).is_file():
        raise LmforgeError(f"{checkpoint}: no {TOKENIZER_FILE}; a checkpoint needs its tokenizer to read prompts")
    tokenizer = load_tokenizer(checkpoint / TOKENIZER_FILE)
    config = read_config(checkpoint)
    if tokenizer.vocab_size > config.vocab_size:
        raise LmforgeError(f"{checkpoint / TOKENIZER_FILE} has {tokenizer.vocab_size:,} token ids but the model has "
                           f"{config.vocab_size:,}; this tokenizer belongs to another model: put the model's own "
                           "tokenizer.json in the checkpoint")
    generation = read_generation(checkpoint)
    torch_device = resolve_device(device)
    model = load_finetuned(checkpoint, torch_device, DTYPES[resolve_precision(precision, torch_device)]).eval()
    ids = special_ids(generation, tokenizer)
    stop_ids = ids.stop_ids
    loaded = InferenceModel(name=checkpoint.resolve().name, model=model, tokenizer=tokenizer, stop_ids=stop_ids,
                            bos_id=ids.bos_id, chat_template=PLAIN_TEMPLATE, bos_token=ids.bos_token,
                            eos_token=ids.eos_token)
    template = chat_template_of(generation)
    known = vocabulary_template(tokenizer)
    if template:
        loaded.chat_template = template
    elif known is not None:
        loaded.chat_template, end_of_turn = known
        loaded.stop_ids = frozenset({*stop_ids, tokenizer.token_to_id(end_of_turn)})
        loaded.template_note = f"no chat template in generation.json; its vocabulary holds {end_of_turn}, so that turn format is used"
    else:
        loaded.chat_stops = PLAIN_STOPS
        loaded.template_note = ("no chat template in generation.json: chatting through plain 'User:' / 'Assistant:' "
                                "lines (a base model; fine-tune it for chat with `lmforge finetune`)")
    return loaded
