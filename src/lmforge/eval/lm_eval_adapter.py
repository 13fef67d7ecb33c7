"""lm-evaluation-harness's model "lmforge": the harness evaluates lmforge checkpoints, scored by
`lmforge.eval.scoring`, the engine under `lmforge eval tasks`.

lm-eval 0.4 looks models up in a registry that only its own modules and the ones already imported
fill; it reads no plugin entry points. So this module, which registers "lmforge", is also a command
that runs lm-eval's own command line with the model registered:

    python -m lmforge.eval.lm_eval_adapter --model lmforge --model_args checkpoint=DIR,dtype=bfloat16 \\
        --tasks piqa --batch_size 16

Every other lm-eval option works as with `lm_eval`. From Python, import this module first:
`import lmforge.eval.lm_eval_adapter` and then `lm_eval.simple_evaluate(model="lmforge",
model_args="checkpoint=DIR", tasks=[...])`. lm-eval itself is not a dependency of lmforge
(`pip install lm_eval`); nothing in lmforge imports this module.

model_args: checkpoint (a checkpoint directory, with its tokenizer.json), batch_size, device
(auto, cpu, cuda, ...), dtype (the weights' dtype, as for `--model hf`: auto, float32, bfloat16,
float16, or fp32/bf16/fp16; auto is bf16 where the hardware computes it natively, else fp32),
max_gen_toks (256), seed (for sampling).
Token ids follow the checkpoint: its generation.json's BOS is put before every context (as the
Hugging Face export's tokenizer does, so `--model hf` on `lmforge convert to-hf` output sees the same
ids), and an empty context is BOS, else EOS, as for lm-eval's `hf` model.

`loglikelihood` and `loglikelihood_rolling` (every window of every text together) are batched by
`score_continuations`; `generate_until` decodes batch_size requests at a time in the engine
(`lmforge.infer.engine`), greedy unless the task asks for do_sample, until a stop string, a stop
token or max_gen_toks. lm-eval's command line defaults to --batch_size 1: give 16 or so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.eval.scoring import rolling_windows, score_continuations, truncated_count
from lmforge.infer.engine import Engine, Sampling
from lmforge.model.checkpoint_directory import TOKENIZER_FILE, read_config, read_generation
from lmforge.peft import load_finetuned
from lmforge.runtime import DTYPES, resolve_device, resolve_precision
from lmforge.tokenizer import load_tokenizer
from lmforge.tokenizer.special_ids import special_ids

logger = logging.getLogger(__name__)
_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@register_model("lmforge")
class LmforgeLM(TemplateLM):
    """A checkpoint as lm-eval sees a model: text in, log-likelihoods and generations out.
    (TemplateLM does the tokenization lm-eval's own models do: the continuation's ids are those of
    context + continuation after the context's, and a trailing space moves to the continuation.)"""

    def __init__(self, checkpoint: str, batch_size: int | str = 16, device: str = "auto", dtype: str = "auto",
                 max_gen_toks: int = 256, seed: int = 1234, max_batch_size: int | None = None) -> None:
        """`max_batch_size` is accepted because lm-eval passes it to every model; `batch_size=auto` is 16."""
        super().__init__()
        directory = Path(checkpoint)
        if not (directory / TOKENIZER_FILE).is_file():
            raise LmforgeError(f"{directory}: no {TOKENIZER_FILE}; lm-eval sends text, so the checkpoint needs its tokenizer")
        self.tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
        model_vocab_size = read_config(directory).vocab_size
        if self.tokenizer.vocab_size > model_vocab_size:
            raise LmforgeError(f"{directory / TOKENIZER_FILE} has {self.tokenizer.vocab_size:,} token ids but the model "
                               f"{model_vocab_size:,}; this tokenizer belongs to another model")
        self._device = _available_device(device)
        precision = resolve_precision(_DTYPE_NAMES.get(str(dtype), str(dtype)), self._device)
        if precision not in DTYPES:
            raise LmforgeError(f"dtype '{dtype}' is not one of auto, float32, bfloat16, float16")
        self.model = load_finetuned(directory, self._device, DTYPES[precision]).eval()
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        generation = read_generation(directory)
        ids = special_ids(generation, self.tokenizer)
        self.bos_id: int | None = ids.bos_id
        self.stop_ids = set(ids.stop_ids)
        if self.tokenizer.eos_id is None and not self.stop_ids:
            raise LmforgeError(f"{directory}: the tokenizer has no EOS token and generation.json no stop_token_ids")

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id if self.tokenizer.eos_id is not None else min(self.stop_ids)

    @property
    def prefix_token_id(self) -> int:
        return self.bos_id if self.bos_id is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    @property
    def tokenizer_name(self) -> str:
        return repr(self.tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The text's ids, after BOS unless `add_special_tokens` is False or the text starts with it.
        Special-token strings in the text are special tokens, as for lm-eval's `hf` model (its
        --apply_chat_template prompts are text holding them); `eval tasks` encodes task data as
        plain text instead (`allowed_special=False`), the two agreeing wherever no such string occurs."""
        ids = self.tokenizer.encode(string)
        if self.bos_id is not None and add_special_tokens is not False and ids[:1] != [self.bos_id]:
            ids = [self.bos_id, *ids]
        return ids

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        token_requests = [(context, continuation) for _, context, continuation in requests]
        self._report_truncation(token_requests)
        results = score_continuations(self.model, token_requests, batch_size=self.batch_size,
                                      progress=not disable_tqdm, description="loglikelihood")
        for (text_pair, _, _), result in zip(requests, results):
            if text_pair is not None:
                self.cache_hook.add_partial("loglikelihood", text_pair, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood, every token scored once from the BOS/EOS prefix on (the prefix
        itself is not scored); the windows of all texts are scored together, in batches."""
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            ids = [self.prefix_token_id, *self.tok_encode(text, add_special_tokens=False)]
            for window in rolling_windows(ids, self.max_length):
                windows.append(window)
                owners.append(index)
        scores = score_continuations(self.model, windows, batch_size=self.batch_size, progress=not disable_tqdm,
                                     description="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for owner, (score, _) in zip(owners, scores):
            totals[owner] += score
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every context (greedy, or sampled when do_sample) until a stop string, a stop token
        or max_gen_toks, `batch_size` of them at a time in the engine."""
        eos_text = self.tokenizer.decode([self.eot_token_id])
        engine = Engine(self.model, self.tokenizer.decode, vocab_size=self.tokenizer.vocab_size, stop_ids=self.stop_ids,
                        max_batch=self.batch_size)
        submitted = []
        for context, gen_kwargs in (request.args for request in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new_tokens = kwargs.pop("max_gen_toks")
            if max_new_tokens >= self.max_length:
                raise LmforgeError(f"max_gen_toks {max_new_tokens} leaves no room for a context in the model's "
                                   f"window of {self.max_length}")
            sampling = kwargs.get("do_sample", False)
            submitted.append(engine.submit(
                self.tok_encode(context)[-(self.max_length - max_new_tokens):],
                Sampling(max_tokens=max_new_tokens, temperature=float(kwargs.get("temperature", 0.0)) if sampling else 0.0,
                         top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), seed=self.seed,
                         stop=tuple(stop for stop in until if stop))))
        with tqdm(total=len(submitted), desc="generate_until", disable=disable_tqdm) as progress:
            while engine.pending():
                progress.update(sum(event.finish_reason is not None for event in engine.step()))
        outputs = []
        for (context, gen_kwargs), request in zip((request.args for request in requests), submitted):
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), request.text)
            outputs.append(request.text)
        return outputs

    def _report_truncation(self, requests: list[tuple[list[int], list[int]]]) -> None:
        count = truncated_count(requests, self.max_length)
        if count:
            logger.warning("%d of %d requests do not fit the model's window of %d tokens; their contexts are cut "
                           "from the left", count, len(requests), self.max_length)


def _available_device(name: str) -> torch.device:
    """The named device; for a CUDA device on a machine without one, the CPU with a warning, as for
    lm-eval's `hf` model (lm-eval's command line passes cuda:0 when no --device is given)."""
    try:
        return resolve_device(name)
    except LmforgeError as error:
        if not name.startswith("cuda"):
            raise
        logger.warning("%s; running on the CPU", error)
        return torch.device("cpu")


def main() -> None:
    """lm-eval's command line, with the "lmforge" model registered (this module is imported)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
