"""OpenAI's legacy text completion (`POST /v1/completions`): a prompt in, its continuation out, no chat template."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.schemas.chat import FinishReason, Sampling, Usage

PromptText = Annotated[str, Field(min_length=1, pattern=r"^[^\x00]*$")]


class CompletionCreate(Sampling):
    """The request body: one prompt (a string, or a list holding one string); the shared sampling settings."""

    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)] = Field(
        description="The text to continue, as it is (no chat template). One prompt per request.")
    max_tokens: int | None = Field(default=16, ge=1, description="OpenAI's default for this endpoint is 16.")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Return each token's log-probability and "
                                 "that many most likely tokens at each step.")
    echo: Literal[False] = Field(default=False, description="The prompt is not repeated in the answer.")
    best_of: Literal[1] = Field(default=1, description="One candidate per request.")
    suffix: None = Field(default=None, description="Insertion is not served.")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def top_count(self) -> int:
        return self.logprobs or 0


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    """The answer, or (with `stream`) one `data:` event of it: each event's `text` is the next piece."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
