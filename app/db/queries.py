"""Queries on organizations, keys, checkpoints, deltas and idempotency records (jobs: `app.db.jobs`)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.tables import ApiKey, Checkpoint, Delta, IdempotencyRecord, Job, JobStatus, Organization, utcnow

KEY_PREFIX = "glk_"


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, org_name: str) -> tuple[Organization, str]:
    """A new API key for the organization `org_name` (made if missing); the key is returned only here."""
    org = session.scalar(select(Organization).where(Organization.name == org_name))
    if org is None:
        org = Organization(name=org_name)
        session.add(org)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(org_id=org.id, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return org, key


def org_for_key(session: Session, key: str) -> Organization | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return session.get(Organization, row.org_id) if row is not None else None


def _owned(session: Session, table: type, org_id: str, row_id: str):
    """A row by id, only if it belongs to the organization (another's id reads as absent)."""
    row = session.get(table, row_id)
    return row if row is not None and row.org_id == org_id else None


def _list_owned(session: Session, table: type, org_id: str, limit: int) -> list:
    """An organization's rows, newest first."""
    query = select(table).where(table.org_id == org_id).order_by(table.created_at.desc(), table.id)
    return list(session.scalars(query.limit(limit)))


def get_checkpoint(session: Session, org_id: str, checkpoint_id: str) -> Checkpoint | None:
    return _owned(session, Checkpoint, org_id, checkpoint_id)


def list_checkpoints(session: Session, org_id: str, limit: int) -> list[Checkpoint]:
    return _list_owned(session, Checkpoint, org_id, limit)


def checkpoint_in_use(session: Session, checkpoint: Checkpoint) -> bool:
    """Whether a queued or running job of its organization reads this checkpoint."""
    active = select(Job).where(Job.org_id == checkpoint.org_id,
                               Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
    return any(item["id"] == checkpoint.id for job in session.scalars(active) for item in job.inputs)


def blob_referenced(session: Session, sha256: str) -> bool:
    """Whether any checkpoint still points at a blob (blobs are shared by identical uploads)."""
    query = select(func.count()).select_from(Checkpoint).where(Checkpoint.sha256 == sha256)
    return bool(session.scalar(query))


def get_delta(session: Session, org_id: str, delta_id: str) -> Delta | None:
    return _owned(session, Delta, org_id, delta_id)


def list_deltas(session: Session, org_id: str, limit: int) -> list[Delta]:
    return _list_owned(session, Delta, org_id, limit)


def find_idempotent(session: Session, org_id: str, scope: str, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(IdempotencyRecord.org_id == org_id,
                                            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
    return session.scalar(query)


def remember_idempotent(session: Session, org_id: str, scope: str, key: str, fingerprint: str,
                        response: dict[str, Any]) -> None:
    session.add(IdempotencyRecord(org_id=org_id, scope=scope, key=key, fingerprint=fingerprint,
                                  response=response, created_at=utcnow()))
