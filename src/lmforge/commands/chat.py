"""`lmforge chat`: talk with a checkpoint in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message; /system alone clears it), /exit"


def chat(
    checkpoint: Path,
    *,
    system: str | None = None,
    index: Path | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    top_p: float | None = 0.95,
    seed: int | None = None,
    top_passages: int = 4,
    passage_budget: int = 1024,
    device: str = "auto",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    compile: bool = False,
) -> None:
    """A conversation in the terminal, through the checkpoint's chat template; answers stream as
    they are made. The history is trimmed to fit the context (the system message and the latest
    turns stay; you are told when turns are dropped). Ctrl-C stops an answer, not the session;
    arrow keys edit and recall lines. A checkpoint without a template chats through its
    vocabulary's turn markers (Gemma's, ChatML's) or, failing those, plain "User:" / "Assistant:"
    lines, and says so. With --index, each question is answered from the top passages of a BM25
    index, and the passages the answer cites are listed under it.

    Commands: /reset forgets the conversation, /system TEXT sets the system message, /exit (or
    Ctrl-D) ends the session.

    Example:
        lmforge chat runs/quickstart-chat
        lmforge chat runs/chat --system "You answer in one sentence."
        lmforge chat runs/chat --index docs-idx --temperature 0
        printf 'Hello\\n/reset\\nWho are you?\\n' | lmforge chat runs/chat --seed 1

    Args:
        checkpoint: An lmforge checkpoint directory (with tokenizer.json; generation.json's chat template).
        system: A system message that opens the conversation.
        index: A BM25 index directory (`lmforge bm25 index`) to ground the answers in.
        max_new_tokens: The most tokens of an answer.
        temperature: Sampling temperature; 0 picks the most likely token every step.
        top_p: Sample among the most likely tokens whose probabilities sum to p (none: all).
        seed: Random seed, for repeatable answers.
        top_passages: With --index: passages put before each question.
        passage_budget: With --index: the most tokens those passages may take.
        device: auto, cpu, cuda, cuda:N.
        precision: Weights' dtype: auto (bf16 where the hardware computes it natively, else fp32), fp32, bf16, fp16.
        compile: Run each decode step as one compiled graph (torch.compile): the first steps
            compile (about a minute on a CPU, less when its cache is warm), every later step is
            faster; worth it for long outputs and sessions.
    """
    from lmforge.bounds import at_least, between, check_value
    from lmforge.infer.chat import Conversation
    from lmforge.infer.grounded import Grounding
    from lmforge.infer.loaded import load_for_inference

    check_value("--max-new-tokens", max_new_tokens, at_least(1))
    check_value("--temperature", temperature, at_least(0))
    check_value("--top-p", top_p, between(0, 1, low_open=True))
    check_value("--top-passages", top_passages, at_least(1))
    check_value("--passage-budget", passage_budget, at_least(1))
    grounding = Grounding.open(index, top_passages, passage_budget) if index is not None else None
    loaded = load_for_inference(checkpoint, device, precision)
    conversation = Conversation(loaded, loaded.engine(max_batch=1, compile=compile), system=system, grounding=grounding,
                                max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  # line editing and history for input()
    if loaded.template_note:
        print(f"note: {loaded.template_note}", file=sys.stderr)
    print(f"chatting with {loaded.name}; {HELP}; Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            conversation.reset()
            print("(conversation reset)")
            continue
        if text == "/system" or text.startswith("/system "):
            conversation.set_system(text[len("/system"):].strip())
            print(f"(system message {'set' if conversation.system else 'cleared'}; conversation kept)")
            continue
        if text.startswith("/"):
            print(f"(unknown command {text.split()[0]}; {HELP})")
            continue
        _answer(conversation, text)


def _answer(conversation, text: str) -> None:
    from lmforge.errors import LmforgeError

    sys.stdout.write("assistant> ")
    sys.stdout.flush()
    try:
        reply = conversation.reply(text, on_text=_write)
    except LmforgeError as error:
        print(f"\n({error})")
        return
    print()
    if reply.finish_reason == "interrupted":
        print("(answer interrupted)")
    elif reply.finish_reason == "length":
        print("(answer cut at --max-new-tokens or the context's end)")
    if reply.dropped_turns:
        print(f"({reply.dropped_turns} earliest exchange{'s' if reply.dropped_turns > 1 else ''} left out to fit the "
              "model's context)")
    if reply.grounding:
        for citation in reply.grounding["citations"]:
            start, end = citation["span"]
            print(f"  [{citation['number']}] {citation['id']} (document {citation['document']}, characters "
                  f"{start}-{end}, score {citation['score']:.2f})")
        if reply.grounding["invalid_citations"]:
            print(f"  cited but not retrieved: {', '.join(f'[{n}]' for n in reply.grounding['invalid_citations'])}")
        if not reply.grounding["grounded"]:
            print("  (not grounded: the answer cites none of the retrieved passages)")


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
