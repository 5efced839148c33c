"""An organization's training data as a JSONL file, one example per line, in either shape:

    {"prompt": "rol ?: abcdefgh #### ", "answer": "cdefghab"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

A conversation ends with the assistant turn the loss falls on; the turns before it are the prompt (a
tokenizer's chat template lays them out; a model without one sees their contents joined by newlines, as
the chat endpoint shows them). Blank lines are skipped. Every malformed line is reported by its number.
No torch here: the file is checked before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.data.tasks import Example
from models.errors import DataFileError

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20  # problems listed in the error; the count says how many there were


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Conversation:
    """A chat example: the turns before the reply, and the assistant's reply (the answer)."""

    turns: tuple[Message, ...]
    answer: str

    @property
    def prompt(self) -> str:
        """The prompt as plain text, for models without a chat template."""
        return "\n".join(m.content for m in self.turns)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.turns]


TrainingExample = Example | Conversation


def parse_line(text: str) -> TrainingExample:
    """One JSONL line as an example; ValueError says what is wrong with it."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    if ("messages" in row) == ("prompt" in row or "answer" in row):
        raise ValueError('expected either "messages" or "prompt" and "answer"')
    if "messages" in row:
        return _conversation(row["messages"])
    prompt, answer = row.get("prompt"), row.get("answer")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise ValueError('"prompt" and "answer" must both be strings')
    if not answer:
        raise ValueError('"answer" is empty: there is nothing to learn')
    return Example(prompt, answer)


def _conversation(messages: object) -> Conversation:
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError('"messages" must be a list of at least two turns')
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with a role in {ROLES} and a string content")
        turns.append(Message(m["role"], m["content"]))
    if turns[-1].role != "assistant" or not turns[-1].content:
        raise ValueError("the last message must be a non-empty assistant reply (the answer to learn)")
    if not any(t.role == "user" for t in turns[:-1]):
        raise ValueError("no user message before the assistant's reply")
    return Conversation(tuple(turns[:-1]), turns[-1].content)


def read_examples(path: Path) -> list[TrainingExample]:
    """Every example of a JSONL file; DataFileError lists the malformed lines by number."""
    examples: list[TrainingExample] = []
    problems: list[tuple[int, str]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    examples.append(parse_line(line))
                except ValueError as exc:
                    problems.append((number, str(exc)))
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataFileError(f"{path}: {exc.strerror or exc}") from None
    if problems:
        listed = "\n".join(f"  line {n}: {msg}" for n, msg in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataFileError(f"{path}: {len(problems)} malformed line(s)\n{listed}{more}", problems)
    if not examples:
        raise DataFileError(f"{path}: no examples")
    return examples
