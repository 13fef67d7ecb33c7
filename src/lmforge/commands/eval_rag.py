"""`lmforge eval rag`: how much retrieval from a BM25 index helps a checkpoint answer, without labels."""

from __future__ import annotations

import json as json_module
import sys
from pathlib import Path
from typing import Literal

from lmforge.errors import LmforgeError


def rag(
    index: Path,
    *,
    checkpoint: Path,
    questions: int = 100,
    k: int = 4,
    seed: int = 0,
    passage_budget: int = 1024,
    max_new_tokens: int = 8,
    max_batch: int = 8,
    prompt_format: Literal["auto", "chat", "completion"] = "auto",
    json: bool = False,
    out: Path | None = None,
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
) -> None:
    """Cloze questions from the index's own passages (a sentence with its rarest indexed word
    blanked), answered by the checkpoint greedily, with the top-k retrieved passages in the prompt
    (numbered, as `chat --index` puts them) and without. A checkpoint with a chat template of its
    own is asked through it; a base model gets text to continue after one solved example. Reports
    retrieval recall@k (the question's source passage among the top k) and answer accuracy both
    ways (an answer is right when it starts with the blanked word, case and punctuation aside).

    Example:
        lmforge eval rag docs-idx --checkpoint runs/chat
        lmforge eval rag docs-idx --checkpoint runs/gemma --questions 200 --k 3 --json
        lmforge eval rag news-idx --checkpoint runs/chat --out rag-answers.jsonl

    Args:
        index: A BM25 index directory (`lmforge bm25 index`; chunk long documents with --chunk-tokens).
        checkpoint: The checkpoint that answers.
        questions: How many cloze questions (one a passage, passages drawn with --seed).
        k: Passages retrieved per question.
        seed: Seed of the passage draw.
        passage_budget: The most tokens the retrieved passages may take in a prompt.
        max_new_tokens: The most tokens of an answer.
        max_batch: Questions decoded together.
        prompt_format: chat (the chat template), completion (text to continue), or auto: chat when
            the checkpoint's generation.json holds a chat template, else completion.
        json: Print one JSON object instead of a table.
        out: Also write every question, the passages retrieved and both answers to this JSONL file.
        device: auto, cpu, cuda, cuda:N.
        precision: Weights' dtype: auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16.
    """
    from lmforge.atomic import atomic_write_text
    from lmforge.bounds import at_least, check_value
    from lmforge.eval.rag import chat_messages, cloze_questions, completion_prompt, evaluate_rag
    from lmforge.infer.engine import Sampling
    from lmforge.infer.grounded import Grounding, grounded_prompt
    from lmforge.infer.loaded import load_for_inference

    for name, value in (("--questions", questions), ("--k", k), ("--passage-budget", passage_budget),
                        ("--max-new-tokens", max_new_tokens), ("--max-batch", max_batch)):
        check_value(name, value, at_least(1))
    grounding = Grounding.open(index, k, passage_budget)
    drawn = cloze_questions(grounding.index, questions, seed)
    if not drawn:
        raise LmforgeError(f"{index}: no passage holds a sentence to make a cloze question from (8+ indexed terms, "
                           "a word of 4+ letters or 2+ Han characters); index longer passages")
    loaded = load_for_inference(checkpoint, device, precision)
    engine = loaded.engine(max_batch=max_batch)
    room = engine.prompt_room + 1 - max_new_tokens

    chat = prompt_format == "chat" or (prompt_format == "auto" and loaded.template_note is None)

    def prompt_ids(question, retrieve: bool) -> list[int]:
        """The question's prompt, with as many of the retrieved passages as leave room for the answer."""
        passages = grounding.retrieve(question.question, loaded.tokenizer) if retrieve else []
        for count in range(len(passages), -1, -1):
            if chat:
                messages = chat_messages(question)
                if count:
                    messages[-1] = {"role": "user", "content": grounded_prompt(question.question, passages[:count])}
                ids = loaded.encode(loaded.render(messages))
            else:
                ids = loaded.encode(completion_prompt(question, passages[:count]))
            if len(ids) <= room or count == 0:
                return ids[-engine.prompt_room:]  # a question alone longer than the context is cut from the left

    def answer(questions: list, retrieve: bool) -> list[str]:
        prompts = [prompt_ids(question, retrieve) for question in questions]
        sampling = Sampling(max_tokens=max_new_tokens, stop=("\n", *loaded.chat_stops))
        print(f"answering {len(prompts)} questions {'with' if retrieve else 'without'} retrieval "
              f"({'chat template' if chat else 'completion prompts'})", file=sys.stderr)
        return [request.text for request in engine.generate(prompts, sampling)]

    report = evaluate_rag(grounding.index, drawn, k, answer)
    if out is not None:
        atomic_write_text(out, "".join(json_module.dumps(row, ensure_ascii=False) + "\n" for row in report.rows))
    if json:
        print(json_module.dumps(report.summary(), indent=2))
        return
    print(f"{'questions':<28}{report.questions:>8}")
    print(f"{f'retrieval recall@{k}':<28}{report.recall_at_k:>8.3f}")
    print(f"{'accuracy with retrieval':<28}{report.accuracy_with_retrieval:>8.3f}")
    print(f"{'accuracy without retrieval':<28}{report.accuracy_without_retrieval:>8.3f}")
    print(f"cloze questions from {index} (seed {seed}), answered by {checkpoint} greedily through "
          f"{'its chat template' if chat else 'completion prompts'}" +
          (f"; wrote {out}" if out is not None else ""))
