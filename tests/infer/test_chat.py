"""Conversations: the prompt is the chat template's, the history is trimmed to the context keeping
the system message and the latest turns, Ctrl-C stops an answer and not the session; grounded
answers put retrieved passages in the prompt and check citations; the `chat` command end to end."""

from __future__ import annotations

import io
import json

import pytest

from lmforge.cli import run
from lmforge.data.examples.chat_template import CHATML_TEMPLATE
from lmforge.infer.chat import Conversation
from lmforge.infer.engine import Sampling
from lmforge.infer.grounded import Grounding, citations, grounded_prompt
from lmforge.infer.loaded import PLAIN_TEMPLATE, load_for_inference
from lmforge.retrieval import BM25Index, Passage

TEXTS = ["The cat sat on the mat because it was warm.", "A dog ran under the red rug quickly.",
         "人民日报 报道 了 新 的 消息。"] * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_random_checkpoint):
    run = make_random_checkpoint(tmp_path_factory.mktemp("chat"), TEXTS, context_length=96)
    (run / "generation.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE}), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_for_inference(checkpoint, "cpu", "fp32")


def test_answer_is_the_engine_greedy_continuation_of_the_template(loaded):
    conversation = Conversation(loaded, loaded.engine(max_batch=1), system="Be brief.", max_tokens=8, temperature=0)
    pieces = []
    reply = conversation.reply("Where did the cat sit?", on_text=pieces.append)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where did the cat sit?"}]
    prompt = loaded.encode(loaded.render(messages))
    assert loaded.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    expected = loaded.engine(max_batch=1).generate([prompt], Sampling(max_tokens=8))[0]
    assert reply.text == "".join(pieces) == expected.text
    assert conversation.history == [messages[1], {"role": "assistant", "content": reply.text}]


def test_history_is_trimmed_to_the_context_keeping_system_and_latest_turns(loaded):
    conversation = Conversation(loaded, loaded.engine(max_batch=1, max_length=96), system="Be brief.", max_tokens=8,
                                temperature=0)
    dropped = 0
    for turn in range(8):
        reply = conversation.reply(f"Tell me about the dog number {turn}.")
        dropped += reply.dropped_turns
    assert dropped > 0
    assert conversation.history[-2]["content"] == "Tell me about the dog number 7."
    ids, _ = conversation.fit(conversation.history)
    assert len(ids) <= conversation.engine.prompt_room - conversation.answer_room
    assert loaded.tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.")
    with pytest.raises(Exception, match="message is too long"):
        conversation.reply("cat " * 200)


def test_ctrl_c_stops_the_answer_not_the_conversation(loaded):
    conversation = Conversation(loaded, loaded.engine(max_batch=1), max_tokens=30, temperature=0)
    seen = []

    def interrupt(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            raise KeyboardInterrupt

    reply = conversation.reply("Hello", on_text=interrupt)
    assert reply.finish_reason == "interrupted" and conversation.engine.pending() == 0
    assert conversation.reply("Hello again").finish_reason in {"stop", "length"}


def test_a_checkpoint_without_template_or_markers_chats_through_plain_lines(tmp_path):
    import torch

    from lmforge.model.checkpoint_directory import save_checkpoint
    from lmforge.model.presets import preset_config
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer

    train_tokenizer(TEXTS, vocab_size=300, special_tokens=["<|endoftext|>"]).save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    save_checkpoint(Transformer(preset_config("tiny-llama")), tmp_path / "base", tokenizer=tmp_path / "tokenizer.json")
    plain = load_for_inference(tmp_path / "base", "cpu", "fp32")
    assert plain.chat_template == PLAIN_TEMPLATE and "User:" in plain.template_note
    assert plain.render([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]) == \
        "Be kind.\n\nUser: Hi\nAssistant:"
    assert plain.chat_stops == ("\nUser:",)


def _passage(number: int) -> Passage:
    return Passage(id=f"doc{number}#0", score=float(10 - number), text=f"passage {number}", document=f"doc{number}",
                   span=(0, 9))


def test_citations_are_checked_against_the_retrieved_passages():
    passages = [_passage(1), _passage(2)]
    checked = citations("The cat sat [1]. Dogs run [2, 7]. Also [3][1].", passages)
    assert [citation["number"] for citation in checked["citations"]] == [1, 2]
    assert checked["citations"][1] == {"number": 2, "id": "doc2#0", "document": "doc2", "span": [0, 9], "score": 8.0}
    assert checked["invalid_citations"] == [3, 7] and checked["grounded"]
    assert citations("No source at all.", passages) == {"citations": [], "invalid_citations": [], "grounded": False}
    assert not citations("Only [5].", passages)["grounded"]
    prompt = grounded_prompt("Where?", passages)
    assert "[1] passage 1" in prompt and "[2] passage 2" in prompt and prompt.endswith("Question: Where?")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    directory = tmp_path_factory.mktemp("index") / "idx"
    documents = [("cats", "The cat sat on the mat because it was warm."), ("dogs", "A dog ran under the red rug."),
                 ("news", "人民日报 报道 了 新 的 消息。")]
    BM25Index.build([text for _, text in documents], ids=[name for name, _ in documents]).save(directory)
    return directory


def test_grounding_retrieves_within_the_budget_and_cites(loaded, index):
    grounding = Grounding.open(index, top=2, budget=1000)
    messages, passages = grounding.prepare([{"role": "user", "content": "Where did the cat sit?"}], loaded.tokenizer)
    assert passages[0].id == "cats" and "[1] The cat sat on the mat" in messages[-1]["content"]
    tight = Grounding.open(index, top=2, budget=3)
    cut = tight.retrieve("Where did the cat sit?", loaded.tokenizer)
    assert len(cut) == 1 and len(loaded.tokenizer.encode(cut[0].text)) <= 3 and cut[0].span[0] == 0
    conversation = Conversation(loaded, loaded.engine(max_batch=1), grounding=grounding, max_tokens=6, temperature=0)
    reply = conversation.reply("Where did the cat sit?")
    assert set(reply.grounding) == {"citations", "invalid_citations", "grounded"}
    assert conversation.history[0] == {"role": "user", "content": "Where did the cat sit?"}  # passages not kept


def test_a_directory_that_is_no_index_is_refused(tmp_path):
    (tmp_path / "not-an-index").mkdir()
    with pytest.raises(Exception, match="not-an-index"):
        Grounding.open(tmp_path / "not-an-index")


def test_chat_command_end_to_end(checkpoint, index, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there\n/system Be brief.\nWho are you?\n/reset\n/bogus\nBye\n"))
    assert run(["chat", str(checkpoint), "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3
    assert "(system message set; conversation kept)" in out and "(conversation reset)" in out
    assert "unknown command /bogus" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Where did the cat sit?\n"))
    assert run(["chat", str(checkpoint), "--index", str(index), "--temperature", "0", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "not grounded" in out or "(document cats" in out
    assert run(["chat", str(checkpoint), "--index", str(checkpoint / "missing")]) != 0
