"""How one request picks its tokens: its sampling settings, its token budget, its random source."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.errors import GradliftError


class RequestError(GradliftError):
    """A chat request this engine cannot serve as asked (bad sampling values, too long for the context)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: until the end token or the context limit
    min_tokens: int = 0  # the end token is not chosen before this many tokens (as vLLM's min_tokens)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # OpenAI's penalties on tokens already generated: a token's logit loses frequency_penalty per time it
    # was sampled, and presence_penalty once if it was sampled at all.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False  # record each sampled token's log-probability (the model's, before sampling settings)
    top_logprobs: int = 0  # and that many most likely alternatives at each step

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise RequestError(f"min_tokens must be in [0, max_tokens], not {self.min_tokens}")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise RequestError(f"temperature must be in [0, 2] and top_p in (0, 1]: {self}")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")
        if not (-2 <= self.presence_penalty <= 2 and -2 <= self.frequency_penalty <= 2):
            raise RequestError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS or (self.top_logprobs and not self.logprobs):
            raise RequestError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}] and needs logprobs")


MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token's log-probability, and the most likely tokens at its step with theirs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The log-probability of `token` under last-position logits [vocab], and the `top` most likely."""
    logprobs = torch.log_softmax(logits.float().cpu(), dim=-1)
    best = logprobs.topk(top) if top else None
    alternatives = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else ()
    return TokenLogprob(token, float(logprobs[token]), alternatives)


def penalize(logits: torch.Tensor, counts: dict[int, int], params: SamplingParams) -> torch.Tensor:
    """Logits [vocab] less the request's presence and frequency penalties for the tokens sampled so far."""
    if not counts or (params.presence_penalty == 0 and params.frequency_penalty == 0):
        return logits
    ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)
    times = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(0, ids, -(params.frequency_penalty * times + params.presence_penalty))


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from last-position logits [vocab]: argmax at temperature 0, else top-p sampling."""
    if params.temperature == 0:
        return int(logits.argmax())
    # Sampled on the CPU with the request's CPU generator, wherever the logits were computed.
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def token_budget(context_length: int, prompt_tokens: int, params: SamplingParams) -> int:
    """The most tokens a request may generate: max_tokens, or what the context has left."""
    budget = context_length - prompt_tokens
    return budget if params.max_tokens is None else min(budget, params.max_tokens)


def request_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's random source, on the CPU, so one seed samples the same tokens on every device."""
    if params.temperature == 0:
        return None
    return torch.Generator().manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))


def next_token(logits: torch.Tensor, eos_index: torch.Tensor, params: SamplingParams, generated: int,
               generator: torch.Generator | None, counts: dict[int, int] | None = None,
               logprobs: list[TokenLogprob] | None = None) -> int:
    """The next token from one request's last-position logits [vocab]; the end token is held back until
    `min_tokens` have been generated (as transformers' min_new_tokens does). `counts` (token -> times
    sampled) is updated and penalised; with `params.logprobs` the token's log-probability goes to `logprobs`."""
    raw = logits
    if counts is not None:
        logits = penalize(logits, counts, params)
    if generated < params.min_tokens:
        logits = logits.index_fill(0, eos_index, float("-inf"))
    token = pick_token(logits, params, generator)
    if counts is not None:
        counts[token] = counts.get(token, 0) + 1
    if params.logprobs and logprobs is not None:
        logprobs.append(token_logprob(raw, token, params.top_logprobs))
    return token


TokenSource = Iterator[int]  # sampled token ids, one request's, ending early only if it was cancelled
