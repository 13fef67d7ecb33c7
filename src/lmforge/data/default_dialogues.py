"""The quickstart's chat fine-tuning set, from installed packages (no download at run time):
chatterbot-corpus's short English and Chinese dialogues, and the first turns of chitchat-dataset's
conversations (the English half of the pretraining corpus, now as turns). Written as OpenAI-style
`{"messages": [...]}` rows, the format `lmforge finetune` reads."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.atomic import atomic_write_text
from lmforge.data.default_corpus import package_path


# What a dialogue may cost, in rough tokens of a small bilingual vocabulary (a CJK character about
# one, other characters about a third): the quickstart fine-tunes 128-token windows.
MAX_COST = 90


def _cost(text: str) -> float:
    return sum(1.0 if ord(character) >= 0x2E80 else 0.3 for character in text)


def _alternating(turns: list[str], max_cost: float = MAX_COST) -> list[dict[str, str]]:
    """user, assistant, user, ... ending on an assistant turn (a trailing question has no answer),
    as many exchanges as fit `max_cost` (none when the first does not)."""
    turns = [turn.strip() for turn in turns if isinstance(turn, str) and turn.strip()]
    kept, spent = [], 0.0
    for start in range(0, len(turns) - 1, 2):
        spent += _cost(turns[start]) + _cost(turns[start + 1])
        if spent > max_cost:
            break
        kept += turns[start:start + 2]
    return [{"role": "user" if index % 2 == 0 else "assistant", "content": turn} for index, turn in enumerate(kept)]


def chatterbot_dialogues(language: str) -> list[list[dict[str, str]]]:
    """Every conversation of chatterbot-corpus's `language` folder, each statement answering the last."""
    import yaml

    folder = package_path("chatterbot_corpus", f"data/{language}", "chatterbot-corpus")
    dialogues = []
    for path in sorted(folder.glob("*.yml")):
        for conversation in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            messages = _alternating([str(turn) for turn in conversation if turn is not None])
            if messages:
                dialogues.append(messages)
    return dialogues


def chitchat_dialogues(count: int, turns: int = 4) -> list[list[dict[str, str]]]:
    """The first `turns` turns of the first `count` chitchat conversations (a turn: one speaker's messages)."""
    path = package_path("chitchat_dataset", "dataset.json", "chitchat-dataset")
    conversations = json.loads(path.read_text(encoding="utf-8"))
    dialogues = []
    for key in sorted(conversations)[:count]:
        said = [" ".join(message["text"] for message in turn) for turn in conversations[key]["messages"][:turns]]
        messages = _alternating(said)
        if messages:
            dialogues.append(messages)
    return dialogues


def write_default_dialogues(path: Path, chitchat: int = 1500) -> dict[str, int]:
    """Write the set as JSONL (atomically); returns how many dialogues each source gave."""
    sources = {"chatterbot english": chatterbot_dialogues("english"), "chatterbot chinese": chatterbot_dialogues("chinese"),
               "chitchat": chitchat_dialogues(chitchat)}
    rows = [json.dumps({"messages": messages}, ensure_ascii=False) for dialogues in sources.values() for messages in dialogues]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(rows) + "\n")
    return {name: len(dialogues) for name, dialogues in sources.items()}
