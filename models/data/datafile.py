"""An organization's training data as a JSONL file, one example per line, in either shape:

    {"prompt": "rol ?: abcdefgh #### ", "answer": "cdefghab"}
    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

A conversation ends with the assistant turn the loss falls on; the turns before it are the prompt (a
tokenizer's chat template lays them out; a model without one sees their contents joined by newlines, as
the chat endpoint shows them). Blank lines are skipped. Every malformed line is reported by its number.
No torch here: the file is checked before any model is loaded.

A prompts file (what an organization may attach to an upgrade: its question format, without answers) has
the same two shapes without the answer: `{"prompt": "..."}`, or `{"messages": [...]}` ending on a user turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from models.data.tasks import Example
from models.errors import DataFileError

ROLES = ("system", "user", "assistant")
T = TypeVar("T")
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

    def _replace_answer(self, answer: str) -> Conversation:
        return replace(self, answer=answer)


TrainingExample = Example | Conversation
Prompt = str | Conversation  # a question without its answer (a Conversation's answer is then "")


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


def parse_prompt_line(text: str) -> Prompt:
    """One line of a prompts file; ValueError says what is wrong with it."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict) or ("messages" in row) == ("prompt" in row):
        raise ValueError('expected an object with either "prompt" or "messages"')
    if "answer" in row:
        raise ValueError('a prompts file holds no answers: drop "answer"')
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError('"prompt" must be a non-empty string')
        return row["prompt"]
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list of turns')
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        raise ValueError("a prompts file holds no answers: end the messages on the user's turn")
    return _conversation([*messages, {"role": "assistant", "content": "-"}])._replace_answer("")


def _collect(lines: Iterable[str], parse: Callable[[str], T], name: str, noun: str) -> list[T]:
    """Every item of a JSONL stream; DataFileError lists the malformed lines by number."""
    items: list[T] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(parse(line))
        except ValueError as exc:
            problems.append((number, str(exc)))
    if problems:
        listed = "\n".join(f"  line {n}: {msg}" for n, msg in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataFileError(f"{name}: {len(problems)} malformed line(s)\n{listed}{more}", problems)
    if not items:
        raise DataFileError(f"{name}: no {noun}")
    return items


def _read(path: Path, parse: Callable[[str], T], noun: str) -> list[T]:
    try:
        with open(path, encoding="utf-8") as handle:
            return _collect(handle, parse, str(path), noun)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataFileError(f"{path}: {exc.strerror or exc}") from None


def read_examples(path: Path) -> list[TrainingExample]:
    """Every example of a JSONL file; DataFileError lists the malformed lines by number."""
    return _read(path, parse_line, "examples")


def read_prompts(path: Path) -> list[Prompt]:
    """Every prompt of a prompts file (JSONL without answers)."""
    return _read(path, parse_prompt_line, "prompts")


def parse_prompts(text: str, name: str = "prompts") -> list[Prompt]:
    """A prompts file's contents, already in memory (an upload)."""
    return _collect(text.splitlines(), parse_prompt_line, name, "prompts")


def prompt_record(prompt: Prompt) -> dict:
    """A prompt as a prompts-file line's object (the inverse of parse_prompt_line)."""
    if isinstance(prompt, str):
        return {"prompt": prompt}
    return {"messages": prompt.messages()}
