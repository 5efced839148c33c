"""`gradlift chat`: a conversation with a model through the service's OpenAI-compatible endpoint, streamed.

Plain httpx reading server-sent events, not the `openai` package: the stream is `data: {json}` lines
ending in `data: [DONE]`, a dozen lines to read, and the command line then needs no extra dependency.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from app.client.http import Api, ClientError


def stream_reply(api: Api, model: str, messages: list[dict[str, str]], **params: Any) -> Iterator[str]:
    """The reply's text pieces as the service streams them."""
    body = {"model": model, "messages": messages, "stream": True,
            **{k: v for k, v in params.items() if v is not None}}
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise ClientError(f"the reply failed: {event['error'].get('message')}")
            for choice in event.get("choices", []):
                if piece := choice.get("delta", {}).get("content"):
                    yield piece


def user_lines(source: TextIO) -> Iterator[str]:
    """What the user types: with a prompt on a terminal, or one turn per line from a pipe."""
    if source.isatty():
        while True:
            try:
                yield input("you> ")
            except EOFError:
                print(file=sys.stderr)
                return
    else:
        yield from (line.rstrip("\n") for line in source)


def chat(api: Api, model: str, lines: Iterable[str], out: TextIO, system: str | None = None,
         keep_history: bool = True, **params: Any) -> int:
    """Run the conversation; `/reset` forgets it, `/exit` ends it. Without `keep_history` each line is a
    conversation of its own (questions piped in, one per line, each answered alone). Returns the number of
    failed turns."""
    start = [{"role": "system", "content": system}] if system else []
    messages, failed = list(start), 0
    for line in lines:
        if not keep_history:
            messages = list(start)
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        pieces: list[str] = []
        try:
            for piece in stream_reply(api, model, messages, **params):
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except ClientError as exc:
            if pieces:
                out.write("\n")
            messages.pop()  # the turn did not happen; the user may retry or /reset
            failed += 1
            print(f"gradlift: error: {exc}", file=sys.stderr)
            continue
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces)})
    return failed
