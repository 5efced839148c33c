"""API keys through the product: `gradlift keys list|revoke|rotate` against a running API (a revoked key
stops working within GRADLIFT_AUTH_CACHE_S), and the throttle on an address that keeps sending keys that
are not valid (429 with Retry-After, without a database lookup, while known keys go on working)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.services import BIN, Services

pytestmark = pytest.mark.slow
CACHE_S = 1.0


def key_id(services: Services, key: str) -> str:
    """The id of a key, found by its first characters in `gradlift keys list`."""
    lines = services.run([str(BIN / "gradlift"), "keys", "list"]).splitlines()
    return next(line.split()[0] for line in lines if f" {key[:12]}... " in line)


def status(services: Services, key: str) -> int:
    return httpx.get(f"{services.base_url}/v1/checkpoints", headers={"Authorization": f"Bearer {key}"}).status_code


def test_list_revoke_rotate(tmp_path: Path) -> None:
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_AUTH_CACHE_S": str(CACHE_S)}
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        first, other = services.make_key("acme"), services.make_key("globex")
        listed = services.run([str(BIN / "gradlift"), "keys", "list", "--org", "acme"])
        assert "acme" in listed and "globex" not in listed and first not in listed  # never the key itself
        assert status(services, first) == 200

        rotated = services.run([str(BIN / "gradlift"), "keys", "rotate", key_id(services, first)])
        second = rotated.strip().splitlines()[-1]
        assert "GRADLIFT_AUTH_CACHE_S" in rotated and second.startswith("glk_") and second != first
        time.sleep(CACHE_S + 0.2)
        assert (status(services, first), status(services, second)) == (401, 200)

        services.run([str(BIN / "gradlift"), "keys", "revoke", key_id(services, second)])
        time.sleep(CACHE_S + 0.2)
        assert (status(services, second), status(services, other)) == (401, 200)
        assert "revoked" in services.run([str(BIN / "gradlift"), "keys", "list", "--org", "acme"])
        with pytest.raises(AssertionError, match="no API key"):
            services.run([str(BIN / "gradlift"), "keys", "revoke", "key_nope"])


def test_guessing_keys_is_throttled_per_address(tmp_path: Path) -> None:
    """3,000 bad keys all answered 401 (each a database lookup), and legitimate requests slowed nine-fold."""
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_AUTH_FAILURE_LIMIT": "5",
           "GRADLIFT_AUTH_FAILURE_WINDOW_S": "60"}
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        known, unknown_yet = services.make_key("acme"), services.make_key("globex")
        assert status(services, known) == 200  # now known valid (cached)
        answers = [status(services, f"glk_guess{i}") for i in range(8)]
        assert answers == [401] * 5 + [429] * 3
        throttled = httpx.get(f"{services.base_url}/v1/pairs", headers={"Authorization": "Bearer glk_x"})
        assert throttled.status_code == 429 and 0 < int(throttled.headers["retry-after"]) <= 60
        assert throttled.json()["error"]["code"] == "rate_limit_exceeded"
        assert status(services, known) == 200  # a key known valid still works from that address
        assert status(services, unknown_yet) == 429  # one not yet known waits too (no lookup is made)
        assert httpx.get(f"{services.base_url}/healthz").status_code == 200
