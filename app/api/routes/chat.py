"""OpenAI-compatible chat completions on a pair's LLM, with or without one of the caller's deltas.

Everything that can be refused is refused before the first byte (404 model, 400 parameters); a failure
after a stream started is sent in-band as `data: {"error": …}` before `[DONE]`. Each request decodes off
the event loop (one executor call for a completion, a thread of its own for a stream); a client that goes
away cancels its generation at the next token. A warm request touches no database: the key's organization
and the model are cached for `auth_cache_s` (see `app.api.cache`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api.admission import Slot, admit, check_prompt_size
from app.api.deps import CurrentOrg, PairsDep, SettingsDep, StoreDep, get_chat_engines
from app.api.routes.models import ChatModel, chat_model
from app.config import Settings
from app.db.tables import Organization
from app.errors import ApiError, Code
from app.pairs import PairCatalog
from app.schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreate,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    Sampling,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.storage import BlobStore

if TYPE_CHECKING:
    from models.serving.engine import ChatEngine, ChatEngines, Generation
    from models.serving.sampling import TokenLogprob as SampledToken

log = logging.getLogger(__name__)


class BadRequestRoute(APIRoute):
    """Invalid chat parameters answer 400, as OpenAI's API does (elsewhere this service answers 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0]
                where = [str(p) for p in first.get("loc", ()) if p != "body"]
                param = ".".join(where) or None
                raise ApiError(Code.invalid_request, f"{param}: {first.get('msg')}" if param
                               else str(first.get("msg")), param=param) from None

        return route


_STREAM = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
           "description": "With `stream: true`: `chat.completion.chunk` events, then `data: [DONE]`."}
CHAT_ERRORS = {**{status: spec for status, spec in ERROR_RESPONSES.items() if status != 422},
           400: {"model": ErrorResponse, "description": "Invalid parameters"},
           500: {"model": ErrorResponse, "description": "The server failed (before a stream started)"},
           429: {"model": ErrorResponse, "description": "The model's queue or the organization's share of chat is "
                                                        "full; see Retry-After"},
           503: {"model": ErrorResponse, "description": "The model cannot be loaded here (GRADLIFT_DEVICE names "
                                                        "a GPU this machine lacks)"}}
router = APIRouter(prefix="/v1/chat", tags=["chat"], route_class=BadRequestRoute, responses=CHAT_ERRORS)


@router.post("/completions", response_model=ChatCompletion, responses={200: _STREAM})
async def create_chat_completion(body: ChatCompletionCreate, request: Request, org: CurrentOrg,
                                 settings: SettingsDep, store: StoreDep, pairs: PairsDep) -> Response:
    """A chat completion from a base LLM or a delta on it; streamed as server-sent events if asked."""
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    return await answer(body, ChatShape(body), [m["content"] for m in messages],
                        lambda engine: engine.prompt_ids(messages), request, org, settings, store, pairs)


class Shape(Protocol):
    """How one kind of completion looks on the wire: the whole answer, or its stream's events."""

    def whole(self, generation: Generation, text: str) -> BaseModel: ...

    def events(self, generation: Generation, pieces: AsyncIterator[str], include_usage: bool) -> AsyncIterator[str]:
        ...


async def answer(body: Sampling, shape: Shape, texts: list[str], prompt: Callable[[ChatEngine], list[int]],
                 request: Request, org: Organization, settings: Settings, store: BlobStore,
                 pairs: PairCatalog) -> Response:
    """Admit a completion request (prompt size, the organization's and the pair's limits), then decode it
    off the event loop: whole, or streamed as server-sent events."""
    check_prompt_size(texts, settings)  # before any tokenising
    slot: Slot | None = admit(settings, org.id)  # 429 past the organization's share, before any lookup
    try:
        model = await chat_model(body.model, settings, org, store, pairs)
        slot.enter(model.pair)  # 429 past the pair's batch and queue
        engines = await get_chat_engines(settings)  # loaded for a request that will use them, not before
        if body.stream:
            generation = await run_in_threadpool(_start, engines, model, body, prompt)
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = _ended(shape.events(generation, _pieces(generation, request), include_usage))
            streaming, slot = slot, None  # the stream holds its place until it ends
            return StreamingResponse(_holding(events, streaming), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        cancel = threading.Event()
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel.set))
        try:
            generation, text = await run_in_threadpool(_complete, engines, model, body, prompt, cancel)
        finally:
            watcher.cancel()
    finally:
        if slot is not None:
            slot.release()
    if generation.finish_reason == "cancelled":
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it
    # Serialised by pydantic directly: FastAPI's response_model path validates and encodes it again.
    return Response(shape.whole(generation, text).model_dump_json(), media_type="application/json")


def sampled(generation: Generation, start: int = 0) -> list[SampledToken]:
    """The generation's tokens from `start` on that it has handed over, with their log-probabilities."""
    eos = generation.engine.eos_token_id
    return [t for t in generation.token_logprobs[start:generation.completion_tokens] if t.token != eos]


class ChatShape:
    """`chat.completion` and `chat.completion.chunk`."""

    def __init__(self, body: ChatCompletionCreate) -> None:
        self.body, self.id, self.created = body, f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

    def _logprobs(self, generation: Generation, tokens: list[SampledToken]) -> ChoiceLogprobs | None:
        if not self.body.logprobs:
            return None
        decode = generation.engine.tokenizer.decode

        def entry(token: int, logprob: float) -> dict[str, Any]:
            text = decode([token])
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return ChoiceLogprobs(content=[TokenLogprob(**entry(t.token, t.logprob),
                                                    top_logprobs=[TopLogprob(**entry(i, lp)) for i, lp in t.top])
                                       for t in tokens])

    def whole(self, generation: Generation, text: str) -> ChatCompletion:
        return ChatCompletion(id=self.id, created=self.created, model=self.body.model, usage=usage_of(generation),
                              choices=[Choice(message=AssistantMessage(content=text),
                                              finish_reason=generation.finish_reason,
                                              logprobs=self._logprobs(generation, sampled(generation)))])

    async def events(self, generation: Generation, pieces: AsyncIterator[str],
                     include_usage: bool) -> AsyncIterator[str]:
        def chunk(delta: Delta, finish: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
            body = ChatCompletionChunk(id=self.id, created=self.created, model=self.body.model,
                                       choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)])
            return sse(body.model_dump(mode="json", exclude={"usage"} if not include_usage else set()))

        yield chunk(Delta(role="assistant", content=""))
        seen = 0
        async for piece in pieces:
            tokens = sampled(generation, seen)
            seen += len(tokens)
            yield chunk(Delta(content=piece), logprobs=self._logprobs(generation, tokens))
        if generation.finish_reason == "cancelled":
            return
        yield chunk(Delta(), generation.finish_reason)
        if include_usage:
            usage = ChatCompletionChunk(id=self.id, created=self.created, model=self.body.model, choices=[],
                                        usage=usage_of(generation))
            yield sse(usage.model_dump(mode="json"))


async def _holding(events: AsyncIterator[str], slot: Slot) -> AsyncIterator[str]:
    try:
        async for event in events:
            yield event
    finally:
        slot.release()


def _start(engines: ChatEngines, model: ChatModel, body: Sampling, prompt: Callable[[ChatEngine], list[int]],
           cancel: threading.Event | None = None) -> Generation:
    """Load what the request needs and check it fits (400 from here); no tokens are decoded yet."""
    from models.serving.sampling import RequestError, SamplingParams

    engine = engines.get(model.pair)
    try:
        params = SamplingParams(max_tokens=body.token_limit, min_tokens=body.min_tokens,
                                temperature=body.temperature, top_p=body.top_p, stop=body.stop_list,
                                seed=body.seed, presence_penalty=body.presence_penalty,
                                frequency_penalty=body.frequency_penalty,
                                logprobs=body.wants_logprobs, top_logprobs=body.top_count)
        return engine.generate(prompt(engine), params, model.adapter, cancel)
    except RequestError as exc:
        raise ApiError(Code.invalid_request, str(exc)) from None


def _complete(engines: ChatEngines, model: ChatModel, body: Sampling, prompt: Callable[[ChatEngine], list[int]],
              cancel: threading.Event) -> tuple[Generation, str]:
    """Start the generation and decode it to the end, in one thread hop."""
    generation = _start(engines, model, body, prompt, cancel)
    return generation, generation.text()


def usage_of(generation: Generation) -> Usage:
    return Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                 total_tokens=generation.prompt_tokens + generation.completion_tokens)


_END = object()
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer


async def _pieces(generation: Generation, request: Request) -> AsyncIterator[str]:
    """The generation's text pieces, decoded in a thread of its own; cancelled when the client leaves."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            generation.cancel()

    def produce() -> None:
        try:
            for piece in generation:
                post(piece)
            post(_END)
        except Exception as exc:  # handed to the request, which reports it
            post(exc)

    threading.Thread(target=produce, name="chat-generation", daemon=True).start()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, generation.cancel))
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
    finally:
        generation.cancel()
        watcher.cancel()


async def _cancel_on_disconnect(request: Request, cancel: Callable[[], None]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    log.info("chat client disconnected; generation cancelled")
    cancel()


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _ended(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """A stream's events, then `[DONE]`; a failure after the stream started goes in-band before it."""
    try:
        async for event in events:
            yield event
    except Exception:
        log.exception("completion stream failed after it started")
        error = ApiError(Code.internal_error, "Generation failed after the stream started.")
        yield sse(error.body())
    yield sse("[DONE]")
