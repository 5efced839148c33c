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
from app.delta_import import import_delta
from models.pairs import Pair
from tests.chat.conftest import OTHER_TASK, TASK
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
def server(chat_pairs_dir: Path, upgraded: Path, upgraded_other: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("chat-data")
    env = {"GRADLIFT_DATA_DIR": str(data), "GRADLIFT_PAIRS_DIR": str(chat_pairs_dir)}
    with Services(env, data / "logs") as services:
        services.migrate()
        services.api()
        key = services.make_key("acme")
        services.make_key("globex")
        settings = Settings(data_dir=data, pairs_dir=chat_pairs_dir)
        ids = [import_delta(settings, org, folder, "toy", task, gt_id=task)
               for org, folder, task in (("acme", upgraded, TASK), ("acme", upgraded_other, OTHER_TASK),
                                         ("globex", upgraded, TASK))]
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
                {"stop": ["a", "b", "c", "d", "e"]}, {"frequency_penalty": 3},
                {"tools": [{"type": "function", "function": {"name": "f"}}]},
                {"max_tokens": 2, "extra_body": {"min_tokens": 3}}):
        with pytest.raises(openai.BadRequestError) as caught:
            server.client.chat.completions.create(model=server.delta, messages=messages, stream=True, **bad)
        assert caught.value.status_code == 400 and caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        server.client.chat.completions.create(model=server.delta, messages=[], stream=True)


def test_the_documented_responses_are_the_ones_it_answers(server: Server) -> None:
    doc = httpx.get(f"{server.services.base_url}/openapi.json", timeout=30).json()
    responses = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "404", "413", "429", "500", "503"}  # not FastAPI's 422
    for status in ("400", "401", "404", "500"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    url, key = f"{server.services.base_url}/v1/chat/completions", server.client.api_key
    messages = [{"role": "user", "content": "hi"}]
    answered = {
        httpx.post(url, json={"model": server.delta, "messages": messages}, timeout=30).status_code,
        httpx.post(url, json={"model": "gpt-4o", "messages": messages}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"}).status_code,
        httpx.post(url, json={"model": server.delta, "messages": messages, "top_p": 7}, timeout=30,
                   headers={"Authorization": f"Bearer {key}"}).status_code,
        httpx.post(url, content=b"{not json", timeout=30, headers={"Authorization": f"Bearer {key}",
                                                                   "Content-Type": "application/json"}).status_code,
    }
    assert answered == {401, 404, 400}


def test_min_tokens_holds_back_the_end_token(server: Server) -> None:
    """vLLM's `min_tokens`: answers that would end after ~9 tokens run to max_tokens."""
    prompt = "rol ?: abcdefgh #### "
    natural = server.client.chat.completions.create(model=server.delta, temperature=0, max_tokens=30,
                                                    messages=[{"role": "user", "content": prompt}])
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 30
    long = server.client.chat.completions.create(model=server.delta, temperature=0, max_tokens=30,
                                                 extra_body={"min_tokens": 30},
                                                 messages=[{"role": "user", "content": prompt}])
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 30
    assert long.choices[0].message.content.startswith(natural.choices[0].message.content)


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


def test_upgraded_accuracy_through_the_endpoint_equals_in_process(server: Server, chat_pair: Pair,
                                                                  upgraded: Path) -> None:
    """The generated update scored as `bench.quality` scores it (merged into the LLM, batched greedy
    `models.evaluate.accuracy`), and the same questions asked through the endpoint: the same answer to
    every question, so the same accuracy, well above the base model's."""
    from bench.experiment import Scorer
    from models.data.evaluate import answers
    from models.data.tasks import get_task, make_splits
    from models.lora.update import add, merge_into, read_adapter

    examples = make_splits(get_task(TASK), seed=chat_pair.spec.seed).test[:50]
    scorer, tokenizer = Scorer(chat_pair), chat_pair.load_tokenizer("llm")
    update_tokens = scorer.layout.to_tokens(read_adapter(upgraded / "update.safetensors"))
    in_process_accuracy = scorer.llm_accuracy(update_tokens, examples)
    # The answers behind that score: `accuracy` decodes the longest answer's tokens + 2 (the end token).
    limit = max(len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples) + 2
    merged = merge_into(chat_pair.load_model("llm"), add(scorer.init, scorer.layout.from_tokens(update_tokens)),
                        chat_pair.spec.lora.scale)
    in_process = answers(merged, tokenizer, [ex.prompt for ex in examples], limit)

    served = [ask(server.client, server.delta, ex.prompt, max_tokens=limit).strip() for ex in examples]
    assert served == in_process
    served_accuracy = sum(s == ex.answer for s, ex in zip(served, examples, strict=True)) / len(examples)
    assert served_accuracy == in_process_accuracy

    base = [ask(server.client, BASE, ex.prompt, max_tokens=limit).strip() for ex in examples]
    base_accuracy = sum(b == ex.answer for b, ex in zip(base, examples, strict=True)) / len(examples)
    assert base_accuracy == scorer.llm_accuracy(None, examples)
    assert served_accuracy >= 0.8 and served_accuracy - base_accuracy >= 0.5, (served_accuracy, base_accuracy)


def test_a_client_that_leaves_cancels_its_generation(chat_pair: Pair) -> None:
    """The route's bridge: a disconnect, or a consumer that stops reading, cancels the generation."""
    from starlette.requests import Request

    from app.api.routes.chat import _pieces
    from models.serving.engine import ChatEngine
    from models.serving.sampling import SamplingParams

    engine = ChatEngine.from_pair(chat_pair)
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
