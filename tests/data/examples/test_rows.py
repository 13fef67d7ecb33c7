"""Reading fine-tuning rows: every format, JSON / JSONL / gzip, bad rows named by file and line, or skipped and counted."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from lmforge.data.examples import ChatExample, CompletionExample, LabeledText, Message, read_examples, read_labeled
from lmforge.errors import LmforgeError


def write_jsonl(path, rows, *, compress=False):
    text = "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def test_alpaca_rows_become_one_user_turn_and_the_reply(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "翻译成英文", "input": "我喜欢猫。", "output": "I like cats.", "system": "你是翻译。"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ])
    examples, report = read_examples([path])
    assert examples == [
        ChatExample((Message("system", "你是翻译。"), Message("user", "翻译成英文\n\n我喜欢猫。"),
                     Message("assistant", "I like cats.")), f"{path}:1"),
        ChatExample((Message("user", "Say hi."), Message("assistant", "Hi!")), f"{path}:2"),
    ]
    assert (report.rows, report.skipped, dict(report.formats)) == (2, 0, {"alpaca": 2})


def test_openai_messages_from_a_json_array_are_named_by_item(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "你好"},
                      {"role": "assistant", "content": "你好！"}]},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    examples, report = read_examples([path])
    assert [example.source for example in examples] == [f"{path}: item 1", f"{path}: item 2"]
    assert [message.role for message in examples[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert examples[1].messages[-1] == Message("assistant", "你好！")
    assert report.formats == {"openai": 2}


def test_sharegpt_rows_in_gzip_map_roles_and_take_the_top_level_system(tmp_path):
    path = write_jsonl(tmp_path / "share.jsonl.gz", [
        {"system": "你是助手。", "conversations": [{"from": "human", "value": "天气？"}, {"from": "gpt", "value": "很好。"},
                                                {"from": "user", "value": "谢谢"}, {"from": "assistant", "value": "不客气"}]},
    ], compress=True)
    [example], report = read_examples([path])
    assert example.messages == (Message("system", "你是助手。"), Message("user", "天气？"), Message("assistant", "很好。"),
                                Message("user", "谢谢"), Message("assistant", "不客气"))
    assert example.source == f"{path}:1" and report.formats == {"sharegpt": 1}


def test_formats_mix_within_and_across_files_and_directories(tmp_path):
    data = tmp_path / "data"
    (data / "more").mkdir(parents=True)
    write_jsonl(data / "a.jsonl", [{"prompt": "1, 2, 3,", "completion": " 4"},
                                   {"instruction": "Name a colour.", "output": "Blue."}])
    (data / "more" / "b.json.gz").write_bytes(gzip.compress(json.dumps(
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]).encode()))
    (data / "notes.txt").write_text("not examples\n")
    examples, report = read_examples([data])
    assert examples[0] == CompletionExample("1, 2, 3,", " 4", f"{data / 'a.jsonl'}:1")
    assert isinstance(examples[1], ChatExample) and examples[2].source == f"{data / 'more' / 'b.json.gz'}: item 1"
    assert report.rows == 3 and report.formats == {"prompt/completion": 1, "alpaca": 1, "openai": 1}


BAD_ROWS = {
    "missing field": ({"instruction": "Say hi."}, "'output' is missing"),
    "wrong type": ({"prompt": "Q", "completion": 4}, "'completion' must be a string, got a number"),
    "unknown role": ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]},
                     "messages[1].role is 'tool'"),
    "unknown sharegpt role": ({"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]},
                              "conversations[1].from is 'bot'"),
    "empty conversation": ({"messages": []}, "the conversation is empty"),
    "ends with the user": ({"messages": [{"role": "user", "content": "x"}]}, "ends with a user message"),
    "late system": ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                                  {"role": "assistant", "content": "y"}]}, "messages[1] is a system message"),
    "message not an object": ({"messages": ["hello"]}, "messages[0] must be an object"),
    "none of the formats": ({"question": "x", "answer": "y"}, "not a fine-tuning example (fields: question, answer)"),
    "not an object": ([1, 2], "expected a JSON object, got an array"),
    "invalid JSON": ('{"prompt": "x", ', "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_named_by_file_and_line_or_skipped_and_counted(tmp_path, case):
    row, reason = BAD_ROWS[case]
    good = {"prompt": "a", "completion": "b"}
    path = write_jsonl(tmp_path / "rows.jsonl", [good, row, good])
    with pytest.raises(LmforgeError) as raised:
        read_examples([path])
    message = str(raised.value)
    assert message.startswith(f"{path}:2: ") and reason in message and "\n" not in message
    examples, report = read_examples([path], on_bad_row="skip")
    assert [example.source for example in examples] == [f"{path}:1", f"{path}:3"]
    assert (report.rows, report.skipped) == (2, 1) and report.first_errors[0].startswith(f"{path}:2: ")


def test_skipping_keeps_only_the_first_few_messages(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ["not json"] * 20 + [{"prompt": "a", "completion": "b"}])
    examples, report = read_examples([path], on_bad_row="skip")
    assert (len(examples), report.skipped, len(report.first_errors)) == (1, 20, 5)


def test_a_json_file_that_does_not_parse_is_named_by_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n{"prompt": "a", "completion": "b"},\n{"prompt": "a" "completion": "b"}\n]\n')
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(path))}:3: not valid JSON"):
        read_examples([path])
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(LmforgeError, match=r"name it \.jsonl"):
        read_examples([lines])
    single = tmp_path / "single.json"
    single.write_text('{"prompt": "a", "completion": "b"}')
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(single))}:1: expected a top-level array"):
        read_examples([single])
    assert read_examples([path, single], on_bad_row="skip")[1].skipped == 2


def test_invalid_utf8_is_named_by_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff", "completion": "b"}\n')
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8"):
        read_examples([path])


def test_missing_files_and_empty_directories_are_clear_errors(tmp_path):
    with pytest.raises(LmforgeError, match="no such file or directory"):
        read_examples([tmp_path / "absent.jsonl"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(LmforgeError, match="holds no .json or .jsonl files"):
        read_examples([tmp_path / "empty"])
    with pytest.raises(LmforgeError, match="not a .json or .jsonl file"):
        read_examples([tmp_path / "empty" / "readme.txt"])


def test_labeled_rows_keep_labels_as_strings(tmp_path):
    path = write_jsonl(tmp_path / "reviews.jsonl", [
        {"text": "这家店很好吃", "label": "positive"},
        {"text": "Terrible service.", "label": 0},
        {"text": "Fine.", "label": True},
        {"text": "Okay.", "label": 2.5},
        {"label": 1},
    ])
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(path))}:3: field 'label' must be a string or a number, got a boolean"):
        read_labeled([path])
    rows, report = read_labeled([path], on_bad_row="skip")
    assert rows == [LabeledText("这家店很好吃", "positive", f"{path}:1"), LabeledText("Terrible service.", "0", f"{path}:2"),
                    LabeledText("Okay.", "2.5", f"{path}:4")]
    assert report.skipped == 2 and "needs fields text and label" in report.first_errors[1]
