"""Who is calling: the organization of a request's API key, checked at most every `auth_cache_s`, and a
throttle on addresses that keep sending keys that are not valid.

A key found valid is trusted for `auth_cache_s` seconds without asking the database again, so a revoked
key goes on working that long at most. A key found not valid costs a database lookup; an address that
sent `auth_failure_limit` of them within `auth_failure_window_s` is answered 429 (with Retry-After) for
every key not already known valid, without a lookup, until its oldest failure leaves the window. Behind
a proxy the address is the proxy's unless uvicorn is told to trust its forwarding headers."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache

from fastapi.concurrency import run_in_threadpool

from app.api.cache import TtlCache
from app.config import Settings
from app.db import queries
from app.db.session import new_session
from app.db.tables import Organization
from app.errors import ApiError, Code

MAX_ADDRESSES = 10_000  # addresses remembered by the throttle; the quietest are forgotten first
NO_KEY = ("You didn't provide an API key. Send `Authorization: Bearer <key>`; make a key with "
          "`gradlift keys create --org NAME`.")


class FailureThrottle:
    """Failures per address in a sliding window; `retry_after` says how long an address must wait."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until the address may try another unknown key (0: it may now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            return times[-self.limit] + self.window_s - now if len(times) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            times.append(now)
            while len(times) > self.limit:  # only the last `limit` matter for the wait
                times.popleft()
            self._failures[address] = times
            self._failures.move_to_end(address)
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)


@lru_cache(maxsize=1)
def _orgs(ttl_s: float) -> TtlCache[tuple[str, str], Organization]:
    return TtlCache(ttl_s, size=10_000)


@lru_cache(maxsize=1)
def _throttle(limit: int, window_s: float) -> FailureThrottle:
    return FailureThrottle(limit, window_s)


def _org_for_key(database_url: str, key: str) -> Organization | None:
    with new_session(database_url) as session:
        return queries.org_for_key(session, key)  # detached when the session closes, attributes loaded


def bearer_token(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def authenticate(token: str | None, address: str, settings: Settings) -> Organization:
    """The organization of an API key; 401 for a missing or unknown key, 429 for an address that sent
    too many unknown keys lately."""
    if token is None:
        raise ApiError(Code.missing_api_key, NO_KEY)
    cache, cache_key = _orgs(settings.auth_cache_s), (settings.database_url, queries.hash_key(token))
    org = cache.get(cache_key)
    if org is not None:
        return org
    throttle = _throttle(settings.auth_failure_limit, settings.auth_failure_window_s)
    wait = throttle.retry_after(address)
    if wait > 0:
        raise ApiError(Code.rate_limit_exceeded, f"Too many requests with API keys that are not valid from "
                       f"this address; try again in {math.ceil(wait)} s.",
                       headers={"Retry-After": str(math.ceil(wait))})
    org = await cache.get_or_load(cache_key, lambda: run_in_threadpool(_org_for_key, settings.database_url, token))
    if org is None:
        throttle.failed(address)
        raise ApiError(Code.invalid_api_key, "Incorrect API key provided.")
    return org
