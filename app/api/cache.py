"""A small in-process cache whose entries expire, for answers the API may reuse for a few seconds
(which organization a key belongs to, what a chat model id names) instead of asking the database again;
concurrent misses of one key share one lookup."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `size` entries, each forgotten `ttl_s` seconds after it was stored (least recently used
    go first when full). A `ttl_s` of 0 stores nothing. Safe to share between threads."""

    def __init__(self, ttl_s: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.size, self.clock = ttl_s, size, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[K, asyncio.Future[V | None]] = {}  # lookups in flight, on the event loop

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The cached value, or `load()`'s, stored unless None. Callers that miss the same key while a
        load is in flight wait for that one instead of loading again: when an entry expires under load,
        one lookup reaches the database, not every request that wanted it (event loop callers only)."""
        value = self.get(key)
        if value is not None:
            return value
        if (pending := self._loading.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():  # this caller was cancelled, not the load
                    raise
                return await self.get_or_load(key, load)  # the loading request went away: load anew
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: the waiters, if any, raise it
            raise
        finally:
            del self._loading[key]
        if value is not None:
            self.put(key, value)
        future.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
