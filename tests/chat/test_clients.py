"""The clients people already use, against a real server (`gradlift api` on the toy pair's base LLM): the
values chat front ends send by default are accepted, what would be silently ignored is refused with a
clear 400, log-probabilities are the model's, and `/v1/completions` answers as chat does. LangChain's
`ChatOpenAI` and LiteLLM (besides the `openai` client) talk to it as they would to OpenAI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.services import Services

pytestmark = pytest.mark.slow
BASE = "toy-llm"
PROMPT = "rot ?: abcde #### "
MAX_PROMPT_CHARS = 2000
# What chat front ends and SDK wrappers send when the user changed nothing.
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logprobs": False, "response_format": {"type": "text"},
           "tools": [], "tool_choice": "none", "parallel_tool_calls": True, "metadata": {"app": "console"},
           "store": False, "n": 1, "user": "someone"}


@pytest.fixture(scope="module")
def server(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, str]]:
    data = tmp_path_factory.mktemp("clients")
    env = {"GRADLIFT_DATA_DIR": str(data), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir),
           "GRADLIFT_CHAT_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS)}
    with Services(env, data / "logs") as services:
        services.migrate()
        services.api()
        yield services, services.make_key("acme")


@pytest.fixture(scope="module")
def client(server: tuple[Services, str]) -> openai.OpenAI:
    services, key = server
    return openai.OpenAI(base_url=f"{services.base_url}/v1", api_key=key, timeout=60, max_retries=0)


def chat(client: openai.OpenAI, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": PROMPT}],
                                          **{"temperature": 0, "max_tokens": 8, **kwargs})


def test_neutral_values_are_accepted_and_change_nothing(client: openai.OpenAI) -> None:
    plain = chat(client).choices[0].message.content
    assert plain
    assert chat(client, **NEUTRAL).choices[0].message.content == plain
    streamed = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": PROMPT}],
                                              temperature=0, max_tokens=8, stream=True, **NEUTRAL)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain


@pytest.mark.parametrize("param, value, words", [
    ("n", 2, "Input should be 1"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}], "calls no tools"),
    ("response_format", {"type": "json_object"}, "'text'"),
    ("store", True, "Input should be False"),
    ("tool_choice", "required", "'none' or 'auto'"),
    ("top_logprobs", 2, "needs logprobs"),
])
def test_what_would_be_ignored_is_refused(client: openai.OpenAI, param: str, value: object, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, **{param: value})
    assert caught.value.status_code == 400 and words in caught.value.body["message"], caught.value.body


def test_penalties_steer_away_from_tokens_already_said(client: openai.OpenAI) -> None:
    plain = chat(client, max_tokens=24).choices[0].message.content or ""
    penalised = chat(client, max_tokens=24, frequency_penalty=2, presence_penalty=2).choices[0].message.content or ""
    # Greedy decoding with the largest penalties: no character is picked while another is as likely.
    assert len(set(penalised)) >= len(set(plain)) and penalised != plain, (plain, penalised)


def test_logprobs_are_the_models_own(client: openai.OpenAI) -> None:
    reply = chat(client, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert len(content) == reply.usage.completion_tokens - (reply.choices[0].finish_reason == "stop")
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].token == token.token  # greedy: the most likely one was chosen
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob, abs_tol=1e-6)
        assert token.bytes == list(token.token.encode())
    streamed = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": PROMPT}],
                                              temperature=0, max_tokens=8, stream=True, logprobs=True)
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]


def test_text_completions_answer_as_chat_does(client: openai.OpenAI) -> None:
    said = chat(client).choices[0].message.content  # the toy tokenizer has no chat template: the same prompt
    reply = client.completions.create(model=BASE, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    assert reply.object == "text_completion" and reply.choices[0].text == said
    assert reply.choices[0].logprobs.tokens and "".join(reply.choices[0].logprobs.tokens) == said
    assert all(len(top) == 2 for top in reply.choices[0].logprobs.top_logprobs)
    assert reply.usage.prompt_tokens == len(PROMPT)  # a character vocabulary, no special tokens added
    pieces = client.completions.create(model=BASE, prompt=[PROMPT], max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(pieces)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == said
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_text_completions_are_limited_as_chat_is(server: tuple[Services, str], client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=BASE, prompt="x" * (MAX_PROMPT_CHARS + 1), max_tokens=1)
    assert "GRADLIFT_CHAT_MAX_PROMPT_CHARS" in caught.value.body["message"]
    for bad in ({"echo": True}, {"best_of": 2}, {"suffix": "end"}, {"logprobs": 6}, {"n": 2}):
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=BASE, prompt=PROMPT, max_tokens=1, **bad)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=1)
    services, _ = server
    no_key = httpx.post(f"{services.base_url}/v1/completions", json={"model": BASE, "prompt": PROMPT}, timeout=30)
    assert no_key.status_code == 401
    doc = httpx.get(f"{services.base_url}/openapi.json", timeout=30).json()
    assert set(doc["paths"]["/v1/completions"]["post"]["responses"]) == {"200", "400", "401", "404", "413", "429",
                                                                        "500", "503"}


def test_langchain_chat_openai(server: tuple[Services, str], client: openai.OpenAI) -> None:
    from langchain_openai import ChatOpenAI

    services, key = server
    said = chat(client).choices[0].message.content
    llm = ChatOpenAI(base_url=f"{services.base_url}/v1", api_key=key, model=BASE, temperature=0, max_tokens=8,
                     max_retries=0)
    assert llm.invoke(PROMPT).content == said
    assert "".join(str(chunk.content) for chunk in llm.stream(PROMPT)) == said


def test_litellm(server: tuple[Services, str], client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list from the package, not the internet
    import litellm

    services, key = server
    said = chat(client).choices[0].message.content
    common = {"model": f"openai/{BASE}", "api_base": f"{services.base_url}/v1", "api_key": key,
              "temperature": 0, "max_tokens": 8}
    reply = litellm.completion(messages=[{"role": "user", "content": PROMPT}], **common)
    assert reply.choices[0].message.content == said
    stream = litellm.completion(messages=[{"role": "user", "content": PROMPT}], stream=True, **common)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == said
    text = litellm.text_completion(prompt=PROMPT, **common)
    assert text.choices[0].text == said
    json.dumps(reply.model_dump())  # a plain response object, as LiteLLM hands it on
