"""One error type with stable codes, rendered as OpenAI's error body by one handler."""

from __future__ import annotations

import logging
from enum import StrEnum
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class Code(StrEnum):
    """Stable machine-readable error codes; each has one HTTP status and one OpenAI error type."""

    missing_api_key = "missing_api_key"
    invalid_api_key = "invalid_api_key"
    invalid_request = "invalid_request"
    method_not_allowed = "method_not_allowed"
    permission_denied = "permission_denied"
    not_found = "not_found"
    pair_not_found = "pair_not_found"
    checkpoint_not_found = "checkpoint_not_found"
    reference_not_found = "reference_not_found"  # an id in the body of a request on another resource
    no_gradient_transformer = "no_gradient_transformer"
    invalid_adapter = "invalid_adapter"
    invalid_prompts = "invalid_prompts"
    invalid_data_file = "invalid_data_file"
    invalid_settings = "invalid_settings"
    unsupported_file_type = "unsupported_file_type"
    file_too_large = "file_too_large"
    request_too_large = "request_too_large"
    rate_limit_exceeded = "rate_limit_exceeded"
    conflict = "conflict"
    idempotency_key_reused = "idempotency_key_reused"
    queue_unavailable = "queue_unavailable"
    not_ready = "not_ready"
    internal_error = "internal_error"


_STATUS: dict[Code, HTTPStatus] = {
    Code.missing_api_key: HTTPStatus.UNAUTHORIZED,
    Code.invalid_api_key: HTTPStatus.UNAUTHORIZED,
    Code.invalid_request: HTTPStatus.BAD_REQUEST,
    Code.method_not_allowed: HTTPStatus.METHOD_NOT_ALLOWED,
    Code.permission_denied: HTTPStatus.FORBIDDEN,
    Code.not_found: HTTPStatus.NOT_FOUND,
    Code.pair_not_found: HTTPStatus.NOT_FOUND,
    Code.checkpoint_not_found: HTTPStatus.NOT_FOUND,
    Code.reference_not_found: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.no_gradient_transformer: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.invalid_adapter: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.invalid_prompts: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.invalid_data_file: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.invalid_settings: HTTPStatus.UNPROCESSABLE_ENTITY,
    Code.unsupported_file_type: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    Code.file_too_large: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.request_too_large: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.rate_limit_exceeded: HTTPStatus.TOO_MANY_REQUESTS,
    Code.conflict: HTTPStatus.CONFLICT,
    Code.idempotency_key_reused: HTTPStatus.CONFLICT,
    Code.queue_unavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.not_ready: HTTPStatus.SERVICE_UNAVAILABLE,
    Code.internal_error: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def error_type(status: int) -> str:
    """OpenAI's `type` field for a status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    return "server_error" if status >= 500 else "invalid_request_error"


class ApiError(Exception):
    """Raised anywhere in a request; the handler turns it into a response."""

    def __init__(self, code: Code, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.status = int(_STATUS[code])
        self.headers = dict(headers or {})
        if self.status == 401:
            self.headers["WWW-Authenticate"] = "Bearer"

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": error_type(self.status), "param": self.param,
                          "code": self.code.value}}


def not_found(kind: str, object_id: str, *, param: str | None = None,
              code: Code = Code.not_found) -> ApiError:
    return ApiError(code, f"No {kind} with id {object_id!r}.", param=param)


def _from_http_exception(exc: StarletteHTTPException) -> ApiError:
    codes = {401: Code.missing_api_key, 404: Code.not_found, 405: Code.method_not_allowed, 409: Code.conflict,
             413: Code.file_too_large}
    error = ApiError(codes.get(exc.status_code, Code.invalid_request), str(exc.detail),
                     headers=exc.headers)  # 405's Allow, 416's Content-Range
    error.status = exc.status_code  # keep the framework's own status (405, 416, ...)
    return error


_FIELD_CODES = {"prompts": Code.invalid_prompts}


def _from_validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(where) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    # A field with a code of its own keeps it when the schema, not the handler, rejects it.
    code = _FIELD_CODES.get(where[0], Code.invalid_request) if where else Code.invalid_request
    error = ApiError(code, message, param=param)
    error.status = int(HTTPStatus.UNPROCESSABLE_ENTITY)
    return error


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, RequestValidationError):
        error = _from_validation_error(exc)
    elif isinstance(exc, StarletteHTTPException):
        error = _from_http_exception(exc)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = ApiError(Code.internal_error, "The server failed to handle the request.")
    return error.response()


def install_error_handler(app: FastAPI) -> None:
    """Route every error a request can raise through the one handler."""
    for exc_type in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, _handle)
