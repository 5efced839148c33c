"""The OpenAPI document, made to list only the statuses a route can answer.

FastAPI documents a 422 for every route that takes any parameter. Here a route keeps it only where a
request can fail validation (a body, a query or header parameter, a path parameter that is not a plain,
unconstrained string); the chat routes answer 400 instead, as OpenAI's API does (`app.api.routes.chat`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.routes.chat import BadRequestRoute


def can_fail_validation(dependant: Dependant) -> bool:
    """Whether a request can fail the validation of this dependant's parameters or its dependencies'."""
    if dependant.body_params or dependant.query_params or dependant.header_params or dependant.cookie_params:
        return True
    if any(p.field_info.annotation is not str or p.field_info.metadata for p in dependant.path_params):
        return True
    return any(can_fail_validation(d) for d in dependant.dependencies)


def with_exact_errors(app: FastAPI, routers: list[APIRouter]) -> Callable[[], dict[str, Any]]:
    """`app.openapi`, with 422 removed from the routes (of `routers`, included without a prefix) that
    cannot answer it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            paths = generate()["paths"]
            for route in (r for router in routers for r in router.routes):
                if isinstance(route, APIRoute) and (isinstance(route, BadRequestRoute)
                                                    or not can_fail_validation(route.dependant)):
                    for method in route.methods:
                        paths.get(route.path_format, {}).get(method.lower(), {}).get("responses", {}).pop("422", None)
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    return openapi
