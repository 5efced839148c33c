"""The chat endpoint over real HTTP with the official `openai` client: a uvicorn server (`gradlift api`)
in a subprocess, real SQLite, generated adapters stored as deltas of an organization."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from app.config import Settings
from bench.serving import register_delta
from tests.e2e.services import Services

pytestmark = pytest.mark.slow
BASE = "toy-llm"


@dataclass
class Server:
    services: Services
    client: openai.OpenAI
    delta: str  # acme's upgrade on the pair's first task
    other: str  # acme's upgrade on another task
    foreign: str  # a delta of another organization


@pytest.fixture(scope="module")
def server(toy_pairs_dir: Path, upgraded: Path, upgraded_other: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("chat-data")
    env = {"GRADLIFT_DATA_DIR": str(data), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir)}
    with Services(env, data / "logs") as services:
        services.migrate()
        services.api()
        key = services.make_key("acme")
        services.make_key("globex")
        settings = Settings(data_dir=data, pairs_dir=toy_pairs_dir)
        ids = [register_delta(settings, org, folder, "toy")
               for org, folder in (("acme", upgraded), ("acme", upgraded_other), ("globex", upgraded))]
        client = openai.OpenAI(base_url=f"{services.base_url}/v1", api_key=key, timeout=60, max_retries=0)
        yield Server(services, client, *ids)


def ask(client: openai.OpenAI, model: str, prompt: str, **kwargs: object) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, **kwargs)
    return reply.choices[0].message.content or ""


def test_list_models(server: Server) -> None:
    models = {m.id: m for m in server.client.models.list()}
    assert set(models) == {BASE, server.delta, server.other}  # not another organization's delta
    delta = models[server.delta].model_dump()
    assert delta["object"] == "model" and delta["root"] == BASE and delta["parent"] == BASE
    assert delta["created"] > 0 and delta["owned_by"].startswith("org_")
    assert models[BASE].model_dump()["root"] == BASE and models[BASE].model_dump()["parent"] is None


def test_chat_completion_and_the_same_streamed(server: Server) -> None:
    prompt = "rol ?: abcdefgh #### "
    reply = server.client.chat.completions.create(model=server.delta, temperature=0, max_tokens=12,
                                                  messages=[{"role": "user", "content": prompt}])
    assert reply.object == "chat.completion" and reply.model == server.delta
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens == len(prompt)  # one token per character
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > usage.prompt_tokens

    chunks = list(server.client.chat.completions.create(
        model=server.delta, temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": prompt}]))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == usage

    raw = httpx.post(f"{server.services.base_url}/v1/chat/completions", timeout=60,
                     headers={"Authorization": f"Bearer {server.client.api_key}"},
                     json={"model": server.delta, "stream": True, "messages": [{"role": "user", "content": prompt}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_errors_come_before_any_stream(server: Server) -> None:
    messages = [{"role": "user", "content": "hi"}]
    for model in ("dlt_000000000000000000000000", server.foreign, "gpt-4o"):
        with pytest.raises(openai.NotFoundError):
            server.client.chat.completions.create(model=model, messages=messages, stream=True)
    bad_key = openai.OpenAI(base_url=server.client.base_url, api_key="glk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model=server.delta, messages=messages)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    for bad in ({"temperature": 3}, {"top_p": 0}, {"max_tokens": 0}, {"max_tokens": 10_000}, {"n": 2},
                {"stop": ["a", "b", "c", "d", "e"]}, {"extra_body": {"frequency_penalty": 1}}):
        with pytest.raises(openai.BadRequestError) as caught:
            server.client.chat.completions.create(model=server.delta, messages=messages, stream=True, **bad)
        assert caught.value.status_code == 400 and caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        server.client.chat.completions.create(model=server.delta, messages=[], stream=True)


def test_two_adapters_in_flight_each_get_their_own(server: Server) -> None:
    prompt = "sep ?: abcde #### "
    models = [server.delta, server.other, BASE]
    solo = {m: ask(server.client, m, prompt) for m in models}
    assert solo[server.delta] != solo[server.other], solo
    barrier, results, spans = threading.Barrier(6), {}, {}

    def run(i: int) -> None:
        model = models[i % 3]
        barrier.wait(timeout=30)
        start = time.monotonic()
        stream = server.client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                       temperature=0, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        spans[i] = (start, time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert {i: results.get(i) for i in range(6)} == {i: solo[models[i % 3]] for i in range(6)}
    first_end = min(end for _, end in spans.values())
    assert sum(start < first_end for start, _ in spans.values()) >= 2, "the requests did not overlap"


def test_upgraded_accuracy_through_the_endpoint_equals_in_process(server: Server, toy_pairs_dir: Path,
                                                                  upgraded: Path) -> None:
    """Same greedy decoding as bench.quality (merged weights, `models.evaluate.accuracy`), 20 questions."""
    from models.evaluate import accuracy, answers
    from models.pairs import PairStore
    from models.tasks import get_task, make_splits
    from models.update import merge_into, read_adapter

    pair = PairStore(toy_pairs_dir).get("toy")
    examples = make_splits(get_task(pair.spec.tasks[0]), seed=pair.spec.seed).test[:20]
    tokenizer = pair.load_tokenizer("llm")
    limit = max(len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples) + 2
    merged = merge_into(pair.load_model("llm"), read_adapter(upgraded / "adapter_model.safetensors"),
                        pair.spec.lora.scale)
    served = [ask(server.client, server.delta, ex.prompt, max_tokens=limit).strip() for ex in examples]
    assert served == answers(merged, tokenizer, [ex.prompt for ex in examples], limit)
    served_accuracy = sum(s == ex.answer for s, ex in zip(served, examples, strict=True)) / len(examples)
    assert served_accuracy == accuracy(merged, tokenizer, examples)
    base = [ask(server.client, BASE, ex.prompt, max_tokens=limit).strip() for ex in examples]
    assert any(b != s for b, s in zip(base, served, strict=True)), "the upgrade changes no answer"


def test_a_client_that_leaves_cancels_its_generation(toy_pairs_dir: Path) -> None:
    """The route's bridge: a disconnect, or a consumer that stops reading, cancels the generation."""
    from starlette.requests import Request

    from app.api.routes.chat import _pieces
    from models.chat_engine import ChatEngine, SamplingParams
    from models.pairs import PairStore

    engine = ChatEngine.from_pair(PairStore(toy_pairs_dir).get("toy"))
    prompt = engine.prompt_ids([{"role": "user", "content": "rol ?: abcdefgh #### "}])

    async def consume_one(disconnect: bool) -> bool:
        gone = asyncio.Event()

        async def receive() -> dict:
            await gone.wait()
            return {"type": "http.disconnect"}

        generation = engine.generate(prompt, SamplingParams(temperature=0))
        pieces = _pieces(generation, Request({"type": "http", "method": "POST", "headers": []}, receive))
        await anext(pieces)
        if disconnect:
            gone.set()
            await asyncio.wait_for(asyncio.to_thread(wait_cancelled, generation), timeout=10)
        await pieces.aclose()
        return generation.cancelled

    assert asyncio.run(consume_one(disconnect=True))
    assert asyncio.run(consume_one(disconnect=False))


def wait_cancelled(generation: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not generation.cancelled:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError("the generation was not cancelled")
        time.sleep(0.01)
