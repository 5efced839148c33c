from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, PlainSerializer

# Text that is stored or looked up in the database: PostgreSQL's text holds no NUL character, so none is
# accepted (422), here and in the document alike.
NO_NUL = r"^[^\x00]*$"

# Unix seconds on the wire, as OpenAI's API gives times.
UnixTime = Annotated[datetime, PlainSerializer(lambda dt: int(dt.timestamp()), return_type=int)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {401: "No key, or a key that is not valid", 404: "Not found for this organization",
                         422: "Invalid request"}.items()
}
