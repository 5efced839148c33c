"""One HTTP client for the service: base URL, API key, and errors turned into readable messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from app.config import ClientSettings, get_client_settings


class ClientError(Exception):
    """Something the command line reports and exits non-zero for."""


def client_settings() -> ClientSettings:
    """GRADLIFT_URL, GRADLIFT_API_KEY, GRADLIFT_CACHE_DIR; a bad value is a ClientError, not a traceback."""
    try:
        return get_client_settings()
    except ValueError as exc:  # pydantic's ValidationError: GRADLIFT_URL without a scheme, say
        raise ClientError(f"invalid client settings: {exc}") from None


class Api:
    """The service at `url`, called with `key`; flags given as None fall back to GRADLIFT_URL / _API_KEY."""

    def __init__(self, url: str | None = None, key: str | None = None, timeout_s: float = 60.0) -> None:
        settings = client_settings()
        self.url = (url or settings.url).rstrip("/")
        key = key or settings.api_key
        if not key:
            raise ClientError("no API key: pass --api-key or set GRADLIFT_API_KEY "
                              "(the service's operator makes one with `gradlift keys create --org NAME`)")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(timeout_s, connect=10.0))

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self.request("GET", path, params=params or None))

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._json(self.request("POST", path, **kwargs))

    def delete(self, path: str) -> Any:
        return self._json(self.request("DELETE", path))

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A checked response: errors (4xx/5xx) and unreachable services raise ClientError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}") from None
        check(response)
        return response

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response; errors (4xx/5xx, except the given `ok` statuses) raise ClientError."""
        ok = kwargs.pop("ok", ())
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.status_code not in ok:
                    if response.is_error:
                        response.read()
                    check(response)
                yield response
        except httpx.TransportError as exc:
            raise ClientError(f"connection to {self.url} failed: {exc}") from None

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{response.request.url} answered something that is not JSON") from None


def check(response: httpx.Response) -> None:
    """ClientError with the service's message for an error status (OpenAI's error body)."""
    if not response.is_error:
        return
    try:
        error = response.json()["error"]
        detail = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        detail = f"HTTP {response.status_code}: {response.text[:300]}"
    raise ClientError(f"{response.request.method} {response.request.url.path}: {detail}")
