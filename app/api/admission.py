"""Admission control for chat: how much decoding one request, one organization and one pair may ask of
this process before it is told to come back later.

- A prompt longer than `chat_max_prompt_chars` characters is refused (400) before it is tokenised:
  tokenising costs time in proportion to the text (a 20 MB prompt took 47 s of CPU), and no prompt that
  long fits a context anyway.
- A pair admits `chat_max_batch` running requests plus `chat_max_queue` waiting for room in its batch;
  an organization has at most `chat_max_per_org` requests in flight. The excess is answered 429 with
  Retry-After at once, before the model is touched, so a crowd of chats holds no threads and leaves the
  event loop (health checks, other organizations' requests) free.
"""

from __future__ import annotations

import threading
from collections import Counter
from functools import lru_cache

from app.config import Settings
from app.errors import ApiError, Code

RETRY_AFTER_S = 1  # a request decodes in about a second on the pairs served here; try again then


class Slot:
    """One admitted request: its organization's place, then (`enter`) its pair's. `release` (any number of
    times, from anywhere; the first counts) frees both."""

    def __init__(self, admission: ChatAdmission, org: str) -> None:
        self.admission, self.org = admission, org
        self.pair: str | None = None
        self._released = False

    def enter(self, pair: str) -> None:
        """Take a place on `pair`, or 429 with Retry-After (the organization's place stays held until
        `release`)."""
        admission = self.admission
        with admission.lock:
            if admission.by_pair[pair] >= admission.per_pair:
                raise _busy(f"Model {pair!r} is answering and queueing as many chat requests as it takes "
                            "(GRADLIFT_CHAT_MAX_BATCH + GRADLIFT_CHAT_MAX_QUEUE).")
            admission.by_pair[pair] += 1
            self.pair = pair

    def release(self) -> None:
        with self.admission.lock:
            if not self._released:
                self._released = True
                self.admission.by_org[self.org] -= 1
                if self.pair is not None:
                    self.admission.by_pair[self.pair] -= 1


class ChatAdmission:
    """Chat requests in flight per pair and per organization, in this process."""

    def __init__(self, per_pair: int, per_org: int) -> None:
        self.per_pair, self.per_org = per_pair, per_org
        self.by_pair: Counter[str] = Counter()
        self.by_org: Counter[str] = Counter()
        self.lock = threading.Lock()

    def admit(self, org: str) -> Slot:
        """A place for one more request of the organization, or 429 with Retry-After; checked before
        anything is looked up, so the excess costs nothing."""
        with self.lock:
            if self.by_org[org] >= self.per_org:
                raise _busy(f"Your organization has {self.by_org[org]} chat requests in flight, the most it may "
                            "have at once (GRADLIFT_CHAT_MAX_PER_ORG).")
            self.by_org[org] += 1
        return Slot(self, org)


def _busy(message: str) -> ApiError:
    return ApiError(Code.rate_limit_exceeded, f"{message} Try again in {RETRY_AFTER_S} s.",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


@lru_cache(maxsize=1)
def _admission(per_pair: int, per_org: int) -> ChatAdmission:
    return ChatAdmission(per_pair, per_org)


def admit(settings: Settings, org: str) -> Slot:
    """Admit one chat request of organization `org` under the settings' limits (`Slot.enter` its pair next)."""
    return _admission(settings.chat_max_batch + settings.chat_max_queue, settings.chat_max_per_org).admit(org)


def check_prompt_size(texts: list[str], settings: Settings) -> None:
    """400 for a prompt longer than `chat_max_prompt_chars` characters, before any tokenising."""
    size = sum(len(text) for text in texts)
    if size > settings.chat_max_prompt_chars:
        raise ApiError(Code.invalid_request, f"The messages hold {size} characters; at most "
                       f"{settings.chat_max_prompt_chars} are accepted (GRADLIFT_CHAT_MAX_PROMPT_CHARS).",
                       param="messages")
