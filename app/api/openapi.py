"""The OpenAPI document, made to list exactly the statuses a route can answer, as clients and fuzzers
(`tests/e2e/test_schemathesis.py`) read it.

FastAPI documents a 422 for every route that takes any parameter. Here a route keeps it only where a
request can fail validation (a body, a query or header parameter, a path parameter that is not a plain,
unconstrained string); the chat routes answer 400 instead, as OpenAI's API does (`app.api.routes.chat`).
What the layers around the routes answer is added where they can answer it: 400 and 413 on routes that
take a body (`app.api.guard` reads it), 429 with Retry-After on routes that need a key (`app.api.auth`).
Every error is documented as the JSON error body it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import current_org
from app.api.guard import depends_on
from app.api.routes.chat import BadRequestRoute

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                                "schema": {"type": "integer", "minimum": 1}}}
_BODY_ERRORS = {"400": "The body cannot be read: not JSON, or a malformed multipart form",
                "413": "The body is larger than the limit (GRADLIFT_MAX_BODY_BYTES, or the upload's)"}
_THROTTLED = "Too many keys that are not valid from this address lately (or, for chat, too many requests)"


def can_fail_validation(dependant: Dependant) -> bool:
    """Whether a request can fail the validation of this dependant's parameters or its dependencies'."""
    if dependant.body_params or dependant.query_params or dependant.header_params or dependant.cookie_params:
        return True
    if any(p.field_info.annotation is not str or p.field_info.metadata for p in dependant.path_params):
        return True
    return any(can_fail_validation(d) for d in dependant.dependencies)


def _exact(route: APIRoute, operation: dict[str, Any]) -> None:
    """The statuses one operation can answer, each error as the JSON error body."""
    responses = operation["responses"]
    if isinstance(route, BadRequestRoute) or not can_fail_validation(route.dependant):
        responses.pop("422", None)
    if "requestBody" in operation:
        for status, text in _BODY_ERRORS.items():
            responses.setdefault(status, {"description": text})
    if depends_on(route.dependant, current_org):
        responses.setdefault("429", {"description": _THROTTLED})
    if "429" in responses:
        responses["429"]["headers"] = _RETRY_AFTER
    for status, response in responses.items():
        if status[0] in "45":
            response["content"] = _ERROR


def with_exact_errors(app: FastAPI, routers: list[APIRouter]) -> Callable[[], dict[str, Any]]:
    """`app.openapi`, with each operation of `routers` (included without a prefix) listing what it can answer."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            paths = generate()["paths"]
            for route in (r for router in routers for r in router.routes):
                if isinstance(route, APIRoute) and route.include_in_schema:  # the console's pages are not API
                    for method in route.methods:
                        _exact(route, paths[route.path_format][method.lower()])
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    return openapi
