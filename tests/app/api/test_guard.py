"""What is settled before a route reads a body: the key (401 / 429), and the body's size (413). The app is
called as an ASGI application with a body that counts what was read of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import pytest

from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import assert_error
from tests.conftest import use_settings

CHUNK = 1 << 16


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    read: int  # bytes of the request body the app took


@dataclass
class _Body:
    chunks: Iterator[bytes]
    read: int = 0
    messages: list[dict] = field(default_factory=list)


def call(api: Api, method: str, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> Answer:
    """One request straight into the app; `chunks` is read lazily, as a client would send it."""
    body, sent = _Body(chunks), []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "state": {},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.9", 40000), "server": ("testserver", 80)}

    upcoming = [next(body.chunks, None)]

    async def receive() -> dict:
        chunk, upcoming[0] = upcoming[0], next(body.chunks, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        body.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": upcoming[0] is not None}

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(api.client.app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content, body.read)


def json_body(megabytes: int) -> Iterator[bytes]:
    yield b'{"pair": "toy", "checkpoint_ids": ["'
    for _ in range(megabytes * (1 << 20) // CHUNK):
        yield b"x" * CHUNK
    yield b'"]}'


def test_no_key_is_refused_before_the_body_is_read(api: Api) -> None:
    """The body was read and parsed to the end before the 401 (a 229 MiB one took 2.4 GiB)."""
    answer = call(api, "POST", "/v1/upgrades", {"content-type": "application/json"}, json_body(64))
    assert (answer.status, answer.read) == (401, 0)
    assert b"missing_api_key" in answer.body and answer.headers["www-authenticate"] == "Bearer"
    wrong = call(api, "POST", "/v1/upgrades", {"content-type": "application/json",
                                               "authorization": "Bearer glk_not-a-key"}, json_body(64))
    assert (wrong.status, wrong.read) == (401, 0)


def test_a_body_past_the_limit_is_refused_as_it_streams(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, max_body_bytes=str(1 << 20))
    headers = {"content-type": "application/json"} | api.auth()
    answer = call(api, "POST", "/v1/upgrades", headers, json_body(64))
    assert answer.status == 413 and b"request_too_large" in answer.body
    assert answer.read <= (1 << 20) + CHUNK  # stopped at the limit, not at the end (64 MiB)


def test_a_declared_length_past_the_limit_is_refused_unread(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, max_body_bytes=str(1 << 20))
    headers = {"content-type": "application/json", "content-length": str(64 << 20)} | api.auth()
    answer = call(api, "POST", "/v1/collaborations", headers, json_body(64))
    assert (answer.status, answer.read) == (413, 0)


def test_a_body_within_the_limit_reaches_the_route(api: Api) -> None:
    headers = {"content-type": "application/json"} | api.auth()
    answer = call(api, "POST", "/v1/upgrades", headers, iter([b'{"pair": "toy", ', b'"checkpoint_ids": []}']))
    assert answer.status == 422 and b"checkpoint_ids" in answer.body  # validated by the route itself


def test_the_same_limit_through_a_real_client(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, max_body_bytes="1000")
    big = {"name": "x" * 2000, "pair": "toy"}
    assert_error(api.client.post("/v1/collaborations", headers=api.auth(), json=big), 413, "request_too_large")
    assert_error(api.client.post("/v1/collaborations", json=big), 401, "missing_api_key")


def test_405_says_what_is_allowed(api: Api) -> None:
    for method, path in [("PUT", "/healthz"), ("DELETE", "/v1/upgrades"), ("PATCH", "/v1/checkpoints/ckpt_x")]:
        response = api.client.request(method, path)
        assert_error(response, 405, "method_not_allowed")
        assert "GET" in response.headers["allow"], (method, path)


def test_nul_characters_are_refused_before_the_database(api: Api) -> None:
    """PostgreSQL's text holds no NUL: a collaboration named with one was a 500 there."""
    body = {"name": "a\x00b", "pair": "toy"}
    assert_error(api.client.post("/v1/collaborations", headers=api.auth(), json=body), 422, "invalid_request")
    assert_error(api.client.get("/v1/checkpoints/ckpt%00x", headers=api.auth()), 404, "not_found")
    assert_error(api.client.post("/v1/upgrades", headers=api.auth(), json={"pair": "toy", "checkpoint_ids": ["\x00"]}),
                 422, "invalid_request")


def test_healthz_answers_while_every_worker_thread_is_busy(api: Api) -> None:
    """It ran in the thread pool: with every thread held (by requests waiting on a locked database), the
    liveness probe waited too (five minutes, once)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/healthz", "raw_path": b"/healthz", "query_string": b"", "root_path": "", "state": {},
             "headers": [], "client": ("127.0.0.9", 40000), "server": ("testserver", 80)}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        async with limiter:  # the only worker thread is taken
            with anyio.fail_after(5):
                await api.client.app(scope, receive, send)

    anyio.run(main)
    assert sent[0]["status"] == 200
