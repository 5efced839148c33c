"""Admission control for chat: how much decoding one request, one organization and one pair may ask of
this process before it is told to come back later.

- A prompt longer than `chat_max_prompt_chars` characters is refused (400) before it is tokenised:
  tokenising costs time in proportion to the text (a 20 MB prompt took 47 s of CPU), and no prompt that
  long fits a context anyway.
- A pair admits `chat_max_batch` running requests plus `chat_max_queue` waiting for room in its batch;
  an organization has at most `chat_max_per_org` requests in flight. The excess is answered 429 at once,
  before the model is touched, so a crowd of chats holds no threads and leaves the event loop (health
  checks, other organizations' requests) free. Retry-After says when a place is likely free: the mean
  time a request spends in flight (measured here), times the number of batches a full pair holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from functools import lru_cache

from app.config import Settings
from app.errors import ApiError, Code

MEAN_START_S = 1.0  # a chat request's time in flight before any has been measured
MAX_RETRY_AFTER_S = 60


class Slot:
    """One admitted request: its organization's place, then (`enter`) its pair's. `release` (any number of
    times, from anywhere; the first counts) frees both."""

    def __init__(self, admission: ChatAdmission, org: str) -> None:
        self.admission, self.org = admission, org
        self.pair: str | None = None
        self.started = time.monotonic()
        self._released = False

    def enter(self, pair: str) -> None:
        """Take a place on `pair`, or 429 with Retry-After (the organization's place stays held until
        `release`)."""
        admission = self.admission
        with admission.lock:
            if admission.by_pair[pair] >= admission.per_pair:
                raise _busy(f"Model {pair!r} is answering and queueing as many chat requests as it takes "
                            "(GRADLIFT_CHAT_MAX_BATCH + GRADLIFT_CHAT_MAX_QUEUE).",
                            admission.mean_s * admission.per_pair / admission.batch)
            admission.by_pair[pair] += 1
            self.pair = pair

    def release(self) -> None:
        admission = self.admission
        with admission.lock:
            if self._released:
                return
            self._released = True
            admission.by_org[self.org] -= 1
            if self.pair is not None:
                admission.by_pair[self.pair] -= 1
                admission.mean_s += 0.1 * (time.monotonic() - self.started - admission.mean_s)


class ChatAdmission:
    """Chat requests in flight per pair and per organization, in this process, and how long one takes."""

    def __init__(self, batch: int, queue: int, per_org: int) -> None:
        self.batch, self.per_pair, self.per_org = batch, batch + queue, per_org
        self.by_pair: Counter[str] = Counter()
        self.by_org: Counter[str] = Counter()
        self.mean_s = MEAN_START_S  # moving mean of admitted requests' time in flight
        self.lock = threading.Lock()

    def admit(self, org: str) -> Slot:
        """A place for one more request of the organization, or 429 with Retry-After; checked before
        anything is looked up, so the excess costs nothing."""
        with self.lock:
            if self.by_org[org] >= self.per_org:
                raise _busy(f"Your organization has {self.by_org[org]} chat requests in flight, the most it may "
                            "have at once (GRADLIFT_CHAT_MAX_PER_ORG).", self.mean_s)
            self.by_org[org] += 1
        return Slot(self, org)


def _busy(message: str, wait_s: float) -> ApiError:
    seconds = min(MAX_RETRY_AFTER_S, max(1, math.ceil(wait_s)))
    return ApiError(Code.rate_limit_exceeded, f"{message} Try again in {seconds} s.",
                    headers={"Retry-After": str(seconds)})


@lru_cache(maxsize=1)
def _admission(batch: int, queue: int, per_org: int) -> ChatAdmission:
    return ChatAdmission(batch, queue, per_org)


def admit(settings: Settings, org: str) -> Slot:
    """Admit one chat request of organization `org` under the settings' limits (`Slot.enter` its pair next)."""
    return _admission(settings.chat_max_batch, settings.chat_max_queue, settings.chat_max_per_org).admit(org)


def check_prompt_size(texts: list[str], settings: Settings) -> None:
    """400 for a prompt longer than `chat_max_prompt_chars` characters, before any tokenising."""
    size = sum(len(text) for text in texts)
    if size > settings.chat_max_prompt_chars:
        raise ApiError(Code.invalid_request, f"The messages hold {size} characters; at most "
                       f"{settings.chat_max_prompt_chars} are accepted (GRADLIFT_CHAT_MAX_PROMPT_CHARS).",
                       param="messages")
