"""OpenAI's chat completion and model shapes (the subset this service serves), so stock clients work."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
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


class ResponseFormat(BaseModel):
    """Only plain text: a JSON mode would be a promise this service does not keep."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


_PENALTY = "Lowers the logit of each token already generated: %s. 0 changes nothing."


class Sampling(BaseModel):
    """What chat and text completions share: the model, the token budget and how tokens are picked.
    Parameters this service does not serve are refused (400), not ignored."""

    # The document says what `_check` enforces: stream_options only with stream true.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["stream"], "properties": {"stream": {"const": True}}},
        {"not": {"required": ["stream_options"]}}]})

    model: str = Field(pattern=NO_NUL, description="A delta id (`dlt_…`) or a base model id from GET /v1/models.")
    max_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int = Field(default=0, ge=0, description="vLLM's extension: the end token is not chosen before "
                            "this many tokens (stop strings still end the text).")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 decodes greedily.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: Literal[1] = Field(default=1, description="One choice per request (several would be silently dropped).")
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63, description="A 64-bit integer.")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2, description=_PENALTY % "once, if it appeared at all")
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2, description=_PENALTY % "once per time it appeared")
    stream: bool = False
    stream_options: StreamOptions | SkipJsonSchema[None] = None
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> Sampling:
        if self.stop == "":
            raise ValueError("stop must not be an empty string")
        if "stream_options" in self.model_fields_set and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.token_limit is not None and self.min_tokens > self.token_limit:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return False

    @property
    def top_count(self) -> int:
        """How many most likely tokens to report at each step."""
        return 0

    @property
    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionCreate(Sampling):
    """The request body. Neutral values that chat front ends send (empty `tools`, `store: false`, text
    `response_format`, `metadata`) are accepted, as vLLM does; what would change the answer and is not
    served (`n` > 1, tools to call, a JSON response format) is refused with 400."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The newer name of max_tokens.")
    logprobs: bool = Field(default=False, description="Return each generated token's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: that many most "
                                     "likely tokens at each step, with theirs.")
    response_format: ResponseFormat | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=0, description="Only an empty list: this service "
                                                 "calls no tools.")] | None = None
    tool_choice: Literal["none", "auto"] | None = Field(default=None, description="With no tools, both mean none.")
    parallel_tool_calls: bool | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16, description="Accepted and not stored.")
    store: Literal[False] | None = Field(default=None, description="Completions are never stored.")

    @field_validator("tools", mode="before")
    @classmethod
    def _no_tools(cls, value: object) -> object:
        if isinstance(value, list) and value:
            raise ValueError("this service calls no tools; send an empty list or none")
        return value

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionCreate:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs

    @property
    def top_count(self) -> int:
        return self.top_logprobs or 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


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
    logprobs: ChoiceLogprobs | None = None


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
