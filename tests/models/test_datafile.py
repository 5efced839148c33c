"""The organization's JSONL data: both shapes read, every malformed line reported by its number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.data.datafile import Conversation, Message, read_examples
from models.data.tasks import Example
from models.errors import DataFileError
from models.pairs.toy import char_tokenizer


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def test_both_shapes_are_read_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [
        json.dumps({"prompt": "rol ?: abc #### ", "answer": "bca"}),
        "",
        chat(("system", "be brief"), ("user", "rol ?: abc #### "), ("assistant", "ok"), ("user", "again"),
             ("assistant", "bca")),
    ])
    plain, conversation = read_examples(path)
    assert plain == Example("rol ?: abc #### ", "bca")
    assert conversation == Conversation((Message("system", "be brief"), Message("user", "rol ?: abc #### "),
                                         Message("assistant", "ok"), Message("user", "again")), "bca")
    # a model without a chat template sees the turns joined by newlines, as the chat endpoint shows them
    assert conversation.prompt == "be brief\nrol ?: abc #### \nok\nagain"


def test_malformed_lines_are_reported_by_number(tmp_path: Path) -> None:
    good = json.dumps({"prompt": "p", "answer": "a"})
    path = write(tmp_path / "d.jsonl", [
        good, "{not json", good, "[1, 2]", json.dumps({"prompt": "p"}), "",
        json.dumps({"prompt": "p", "answer": "a", "messages": []}),
        chat(("user", "hi")), chat(("user", "hi"), ("assistant", "")), chat(("assistant", "a"), ("assistant", "b")),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    ])
    with pytest.raises(DataFileError) as caught:
        read_examples(path)
    assert [n for n, _ in caught.value.problems] == [2, 4, 5, 7, 8, 9, 10, 11]
    assert "8 malformed line(s)" in str(caught.value) and "line 2: not valid JSON" in str(caught.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no examples"):
        read_examples(write(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(DataFileError, match="No such file"):
        read_examples(tmp_path / "missing.jsonl")


def test_many_problems_are_counted_not_all_listed(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as caught:
        read_examples(write(tmp_path / "d.jsonl", ["x"] * 50))
    assert len(caught.value.problems) == 50 and "and 30 more" in str(caught.value)


def test_conversations_use_the_chat_template_when_the_tokenizer_has_one() -> None:
    from models.data.textdata import IGNORE, encode_batch

    tokenizer = char_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}a:{% endif %}")
    conversation = Conversation((Message("system", "x"), Message("user", "ab")), "ba")
    batch = encode_batch(tokenizer, [conversation, Example("ab", "ba")])
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert tokenizer.decode(first) == "s:x\nu:ab\na:ba<eos>"
    answer = batch["labels"][0][batch["labels"][0] != IGNORE]
    assert tokenizer.decode(answer) == "ba<eos>"  # the loss falls on the reply alone
