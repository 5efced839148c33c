"""OpenAI's legacy text completions, which many tools still call: the prompt is continued as it is, with
the same models, admission control, limits and sampling as chat (`app.api.routes.chat`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from app.api.deps import CurrentOrg, PairsDep, SettingsDep, StoreDep
from app.api.routes.chat import CHAT_ERRORS, BadRequestRoute, answer, sampled, sse, usage_of
from app.schemas.completions import Completion, CompletionChoice, CompletionCreate, CompletionLogprobs

if TYPE_CHECKING:
    from models.serving.engine import ChatEngine, Generation
    from models.serving.sampling import TokenLogprob

_STREAM = {"content": {"text/event-stream": {"schema": {"type": "string"}}},
           "description": "With `stream: true`: `text_completion` events, then `data: [DONE]`."}
router = APIRouter(prefix="/v1", tags=["chat"], route_class=BadRequestRoute, responses=CHAT_ERRORS)


@router.post("/completions", response_model=Completion, responses={200: _STREAM})
async def create_completion(body: CompletionCreate, request: Request, org: CurrentOrg, settings: SettingsDep,
                            store: StoreDep, pairs: PairsDep) -> Response:
    """A text completion: the prompt continued by a base LLM or a delta on it; streamed if asked."""
    return await answer(body, TextShape(body), [body.text], lambda engine: _prompt_ids(engine, body.text),
                        request, org, settings, store, pairs)


def _prompt_ids(engine: ChatEngine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


class TextShape:
    """`text_completion`, whole or as events."""

    def __init__(self, body: CompletionCreate) -> None:
        self.body, self.id, self.created = body, f"cmpl-{secrets.token_hex(12)}", int(time.time())

    def _logprobs(self, generation: Generation, tokens: list[TokenLogprob], offset: int) -> CompletionLogprobs | None:
        if not self.body.wants_logprobs:
            return None
        decode = generation.engine.tokenizer.decode
        texts = [decode([t.token]) for t in tokens]
        offsets = [offset + sum(len(t) for t in texts[:i]) for i in range(len(texts))]
        return CompletionLogprobs(tokens=texts, token_logprobs=[t.logprob for t in tokens], text_offset=offsets,
                                  top_logprobs=[{decode([i]): lp for i, lp in t.top} for t in tokens])

    def _event(self, text: str, finish: str | None, logprobs: CompletionLogprobs | None = None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.body.model,
                          choices=[CompletionChoice(text=text, finish_reason=finish, logprobs=logprobs)])

    def whole(self, generation: Generation, text: str) -> Completion:
        answer = self._event(text, generation.finish_reason, self._logprobs(generation, sampled(generation), 0))
        answer.usage = usage_of(generation)
        return answer

    async def events(self, generation: Generation, pieces: AsyncIterator[str],
                     include_usage: bool) -> AsyncIterator[str]:
        seen, offset = 0, 0
        async for piece in pieces:
            tokens = sampled(generation, seen)
            seen += len(tokens)
            yield sse(self._event(piece, None, self._logprobs(generation, tokens, offset))
                       .model_dump(mode="json", exclude={"usage"}))
            offset += len(piece)
        if generation.finish_reason == "cancelled":
            return
        yield sse(self._event("", generation.finish_reason).model_dump(mode="json", exclude={"usage"}))
        if include_usage:
            usage = Completion(id=self.id, created=self.created, model=self.body.model, choices=[],
                               usage=usage_of(generation))
            yield sse(usage.model_dump(mode="json"))
