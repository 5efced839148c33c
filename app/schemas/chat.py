"""OpenAI's chat completion and model shapes (the subset this service serves), so stock clients work."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import NO_NUL


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionCreate(BaseModel):
    """The request body. Parameters this service does not serve are rejected (400), not ignored."""

    # The document says what `_check` enforces: stream_options only with stream true.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["stream"], "properties": {"stream": {"const": True}}},
        {"not": {"required": ["stream_options"]}}]})

    model: str = Field(pattern=NO_NUL, description="A delta id (`dlt_…`) or a base model id from GET /v1/models.")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The newer name of max_tokens.")
    min_tokens: int = Field(default=0, ge=0, description="vLLM's extension: the end token is not chosen before "
                            "this many tokens (stop strings still end the text).")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 decodes greedily.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: Literal[1] = 1
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63, description="A 64-bit integer.")
    stream: bool = False
    stream_options: StreamOptions | SkipJsonSchema[None] = None
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionCreate:
        if self.stop == "":
            raise ValueError("stop must not be an empty string")
        if "stream_options" in self.model_fields_set and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.token_limit is not None and self.min_tokens > self.token_limit:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a stream; the usage chunk has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelPublic(BaseModel):
    """A base LLM (`root` is itself, no `parent`) or a delta on it (`root` and `parent`: the base)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None
    pair: str


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
    count: int
