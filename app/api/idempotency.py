"""`Idempotency-Key` on creating POSTs: the first request's outcome is stored, and a retry gets the
resource it made as that resource is now (a job that has run since shows its progress; a resource
deleted since answers 409 saying so), never a copy of an answer that is no longer true."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db import queries
from app.errors import ApiError, Code


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def replay(session: Session, org_id: str, scope: str, key: str | None, print_: str) -> str | None:
    """The id of the resource the first request with this key made, or None; a key reused for a
    different request is refused."""
    if key is None:
        return None
    record = queries.find_idempotent(session, org_id, scope, key)
    if record is None:
        return None
    if record.fingerprint != print_:
        raise ApiError(Code.idempotency_key_reused, "This Idempotency-Key was used with a different request.")
    return str(record.response["id"])


def gone(kind: str, resource_id: str) -> ApiError:
    """The answer to a retry whose resource has been deleted since the first request made it."""
    return ApiError(Code.conflict, f"This Idempotency-Key made {kind} {resource_id!r}, which has been deleted "
                    "since; send the request without the key (or with a new one) to make another.", param=None)


def remember(session: Session, org_id: str, scope: str, key: str | None, print_: str,
             response: BaseModel) -> None:
    """Store the response in the caller's transaction, so it commits with what it describes."""
    if key is not None:
        queries.remember_idempotent(session, org_id, scope, key, print_, response.model_dump(mode="json"))
