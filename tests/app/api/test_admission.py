"""Admission control for chat on the toy pair's LLM: a prompt too long is refused before it is tokenised;
past the pair's batch and queue, or past an organization's share, a request gets 429 with Retry-After at
once. The admitted requests are held at the start of their generation (the real one, paused) so the
counts are exact."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.routes import chat
from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import assert_error
from tests.conftest import use_settings

PROMPT = "rot ?: abcde #### "


@pytest.fixture
def limited(toy_api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    use_settings(monkeypatch, pairs_dir=str(toy_api.settings.pairs_dir), chat_max_batch="2", chat_max_queue="1",
                 chat_max_per_org="2", chat_max_prompt_chars="500")
    yield toy_api


def body(stream: bool = False, prompt: str = PROMPT) -> dict:
    return {"model": "toy-llm", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0, "stream": stream}


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Semaphore, threading.Event, list]]:
    """Requests that reach the model wait there until `go` is set; `arrived` counts them."""
    arrived, go, calls = threading.Semaphore(0), threading.Event(), []
    real: Callable = chat._start

    def waiting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        arrived.release()
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(chat, "_start", waiting)
    yield arrived, go, calls
    go.set()


def post_in_thread(client: TestClient, headers: dict, payload: dict, out: list) -> threading.Thread:
    def run() -> None:
        response = client.post("/v1/chat/completions", headers=headers, json=payload)
        out.append((response.status_code, response.text))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_long_prompt_is_refused_before_it_is_tokenised(limited: Api, held: tuple) -> None:
    """It was tokenised first (a 20 MB prompt: 47 s of CPU), then refused for the context length."""
    _, go, calls = held
    go.set()
    response = limited.client.post("/v1/chat/completions", headers=limited.auth(), json=body(prompt="x" * 600))
    error = assert_error(response, 400, "invalid_request")
    assert "GRADLIFT_CHAT_MAX_PROMPT_CHARS" in error["message"] and error["param"] == "messages"
    assert calls == []


def test_an_organization_gets_its_share_and_no_more(limited: Api, held: tuple) -> None:
    arrived, go, _ = held
    acme, globex = limited.auth("acme"), limited.auth("globex")
    out: list = []
    admitted = [post_in_thread(limited.client, acme, body(stream=s), out) for s in (False, True)]
    for _ in admitted:
        assert arrived.acquire(timeout=30)
    refused = limited.client.post("/v1/chat/completions", headers=acme, json=body())
    assert_error(refused, 429, "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "GRADLIFT_CHAT_MAX_PER_ORG" in refused.json()["error"]["message"]
    unlooked = limited.client.post("/v1/chat/completions", headers=acme, json=body() | {"model": "dlt_unknown"})
    assert_error(unlooked, 429, "rate_limit_exceeded")  # refused before the model is looked up (not a 404)
    other = post_in_thread(limited.client, globex, body(), out)  # another organization is not held up
    assert arrived.acquire(timeout=30)
    go.set()
    for thread in [*admitted, other]:
        thread.join(60)
    assert [status for status, _ in out] == [200, 200, 200]
    again = limited.client.post("/v1/chat/completions", headers=acme, json=body())  # the places came back
    assert again.status_code == 200, again.text


def test_a_pair_takes_its_batch_and_queue_and_no_more(limited: Api, held: tuple) -> None:
    arrived, go, _ = held
    out: list = []
    admitted = [post_in_thread(limited.client, limited.auth(org), body(stream=org == "b"), out)
                for org in ("a", "b", "c")]  # batch 2 + queue 1, one each
    for _ in admitted:
        assert arrived.acquire(timeout=30)
    refused = limited.client.post("/v1/chat/completions", headers=limited.auth("d"), json=body())
    assert "GRADLIFT_CHAT_MAX_QUEUE" in assert_error(refused, 429, "rate_limit_exceeded")["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60  # when a place is likely free: a full pair's drain
    go.set()
    for thread in admitted:
        thread.join(60)
    assert sorted(status for status, _ in out) == [200, 200, 200]
    assert limited.client.post("/v1/chat/completions", headers=limited.auth("d"), json=body()).status_code == 200


def test_retry_after_says_when_a_place_is_likely_free() -> None:
    """From the mean time a request spends in flight: once for an organization's place, a full pair's
    batches' worth for the pair's (a crowd told to come back in 1 s kept the server answering 429s)."""
    from app.api.admission import ChatAdmission
    from app.errors import ApiError

    admission = ChatAdmission(batch=2, queue=4, per_org=10)
    admission.mean_s = 2.2
    slots = [admission.admit("acme") for _ in range(6)]
    for slot in slots:
        slot.enter("toy")
    extra = admission.admit("acme")
    with pytest.raises(ApiError) as refused:
        extra.enter("toy")
    assert refused.value.headers["Retry-After"] == "7"  # 2.2 s x 6 places / 2 per batch = 6.6
    for slot in [*slots, extra, extra]:  # releasing twice counts once
        slot.release()
    assert admission.by_pair["toy"] == 0 and admission.by_org["acme"] == 0


def test_requests_that_will_not_decode_do_not_load_the_model(limited: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat engines (torch, the pair's LLM: seconds on a cold server) were loaded for every request
    that reached the route, a malformed or an unknown-model one included."""
    from app.api import deps

    monkeypatch.setattr(deps, "_ENGINES", {})
    assert limited.client.post("/v1/chat/completions", headers=limited.auth(), json={"model": "toy-llm"}
                               ).status_code == 400
    assert limited.client.post("/v1/chat/completions", headers=limited.auth(), json=body() | {"model": "nope"}
                               ).status_code == 404
    assert deps._ENGINES == {}
    assert limited.client.post("/v1/chat/completions", headers=limited.auth(), json=body()).status_code == 200
    assert len(deps._ENGINES) == 1
