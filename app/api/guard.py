"""The outermost layer of the API: what is settled before a route reads a byte of the request's body.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so without this layer a
request with no key could make the server read and parse any amount of JSON before its 401. Here, for
the route a request is for:
- a route that needs a key gets the caller's organization first (401 / 429 before the body is read;
  the route's `CurrentOrg` then finds it on the request);
- every route but the streamed upload (whose limit its multipart reader enforces as it streams) takes at
  most `max_body_bytes`: a larger Content-Length is refused before the body is read, and a body without
  one (chunked) is refused as it passes the limit (413). Up to that size the body is read here and handed
  on, so the route parses a body that is known to be small.
A path that no route takes with the request's method answers 405 with every method the path has in
`Allow`; requests for no route of ours go on untouched (the router answers 404).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import authenticate, bearer_token
from app.config import get_settings
from app.errors import ApiError, Code


@dataclass(frozen=True)
class _Rule:
    route: BaseRoute
    needs_key: bool
    streams: bool  # reads its own body as it streams in, with its own limit


def depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    """Whether `call` is among a route's dependencies, however deep."""
    return any(d.call is call or depends_on(d, call) for d in dependant.dependencies)


class RequestGuard:
    """ASGI middleware: authenticate, then cap the body, before the route runs (see the module)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], key_dependency: Callable[..., Any],
                 streamed: set[Callable[..., Any]]) -> None:
        self.app = app
        self.rules = [_Rule(r, isinstance(r, APIRoute) and depends_on(r.dependant, key_dependency),
                            isinstance(r, APIRoute) and r.endpoint in streamed) for r in routes]

    def _rule(self, scope: Scope) -> _Rule | None:
        """The rule of the route the router will pick: the first that matches path and method; 405 with
        every method the path has (the router would name only the first route's) if only the path does."""
        matches = [(rule, rule.route.matches(scope)[0]) for rule in self.rules]
        if full := next((rule for rule, match in matches if match == Match.FULL), None):
            return full
        allowed = sorted({m for rule, match in matches if match == Match.PARTIAL
                          for m in getattr(rule.route, "methods", ())})
        if allowed:
            raise ApiError(Code.method_not_allowed, f"{scope['method']} is not allowed here; allowed: "
                           f"{', '.join(allowed)}.", headers={"Allow": ", ".join(allowed)})
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if "\x00" in scope.get("path", ""):  # names nothing here (and PostgreSQL's text cannot hold it)
                raise ApiError(Code.not_found, "No resource has a NUL character in its path.")
            rule = self._rule(scope) if scope["type"] == "http" else None
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        if rule is None:
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        try:
            if rule.needs_key:
                address = (scope.get("client") or ("unknown",))[0]
                token = bearer_token(Headers(scope=scope).get("authorization"))
                scope.setdefault("state", {})["org"] = await authenticate(token, address, settings)
            if not rule.streams:
                receive = await _read_capped(scope, receive, settings.max_body_bytes)
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(Code.request_too_large, f"The request body is larger than the limit of {limit} bytes "
                    "(GRADLIFT_MAX_BODY_BYTES).")


async def _read_capped(scope: Scope, receive: Receive, limit: int) -> Receive:
    """Read the whole body if it is at most `limit` bytes (413 otherwise, as soon as that is known);
    a receive that hands it on in one message, then passes on whatever comes next (a disconnect)."""
    declared = Headers(scope=scope).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left: hand that on as it came
            return _replay(message, receive)
        body += message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        more = message.get("more_body", False)
    return _replay({"type": "http.request", "body": bytes(body), "more_body": False}, receive)


def _replay(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
