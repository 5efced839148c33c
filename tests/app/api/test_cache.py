"""The expiring cache behind the API key and chat model lookups, and what it means for a revoked key."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from app.api.cache import TtlCache
from app.db.session import session_scope
from app.db.tables import ApiKey, utcnow
from tests.app.api.conftest import Api
from tests.conftest import use_settings


def test_entries_expire_and_the_oldest_go_when_full() -> None:
    now = [100.0]
    cache: TtlCache[str, int] = TtlCache(ttl_s=10, size=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    now[0] += 9.9
    assert cache.get("a") == 1
    now[0] += 0.1
    assert cache.get("a") is None and cache.get("c") is None


def test_a_ttl_of_zero_stores_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0, size=10)
    cache.put("a", 1)
    assert cache.get("a") is None


def revoke_every_key() -> None:
    with session_scope() as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))


@pytest.mark.parametrize("cache_s", [0.0, 0.5])
def test_a_revoked_key_stops_working_within_auth_cache_s(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                         cache_s: float) -> None:
    use_settings(monkeypatch, auth_cache_s=str(cache_s))
    headers = api.auth("acme")
    assert api.client.get("/v1/checkpoints", headers=headers).status_code == 200
    revoke_every_key()
    time.sleep(cache_s)
    assert api.client.get("/v1/checkpoints", headers=headers).status_code == 401


def test_a_cached_key_is_trusted_for_auth_cache_s(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the cache's lifetime the database is not asked again: the revoked key still answers (no
    machine takes a minute between two requests)."""
    use_settings(monkeypatch, auth_cache_s="60")
    headers = api.auth("acme")
    assert api.client.get("/v1/checkpoints", headers=headers).status_code == 200
    revoke_every_key()
    assert api.client.get("/v1/checkpoints", headers=headers).status_code == 200


def test_concurrent_misses_share_one_lookup() -> None:
    """An entry expiring under load sent every waiting request to the database at once (SQLite's write
    lock then timed out: 500s)."""
    import asyncio

    cache: TtlCache[str, int] = TtlCache(ttl_s=10, size=10)
    calls: list[int] = []

    async def load() -> int:
        calls.append(1)
        await asyncio.sleep(0.05)
        return 7

    async def missing() -> int | None:
        calls.append(1)
        await asyncio.sleep(0.05)
        return None

    async def failing() -> int:
        await asyncio.sleep(0.05)
        raise LookupError("gone")

    async def main() -> None:
        assert await asyncio.gather(*(cache.get_or_load("a", load) for _ in range(50))) == [7] * 50
        assert len(calls) == 1 and cache.get("a") == 7
        assert await asyncio.gather(*(cache.get_or_load("b", missing) for _ in range(20))) == [None] * 20
        assert len(calls) == 2 and cache.get("b") is None  # a miss is shared, not stored
        results = await asyncio.gather(*(cache.get_or_load("c", failing) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, LookupError) for r in results)

    asyncio.run(main())
