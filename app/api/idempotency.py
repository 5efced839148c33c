"""`Idempotency-Key` on creating POSTs: the first response is stored and replayed to retries."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db import queries
from app.errors import ApiError, Code


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def replay(session: Session, org_id: str, scope: str, key: str | None, print_: str) -> dict[str, Any] | None:
    """The stored response for this key, or None; a key reused for a different request is refused."""
    if key is None:
        return None
    record = queries.find_idempotent(session, org_id, scope, key)
    if record is None:
        return None
    if record.fingerprint != print_:
        raise ApiError(Code.idempotency_key_reused, "This Idempotency-Key was used with a different request.")
    return record.response


def remember(session: Session, org_id: str, scope: str, key: str | None, print_: str,
             response: BaseModel) -> None:
    """Store the response in the caller's transaction, so it commits with what it describes."""
    if key is not None:
        queries.remember_idempotent(session, org_id, scope, key, print_, response.model_dump(mode="json"))
