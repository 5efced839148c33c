"""Queries on organizations, keys, checkpoints, deltas, collaborations and idempotency records (jobs:
`app.db.jobs`)."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, text
from sqlalchemy.orm import Session

from app.db.tables import (
    TERMINAL,
    ApiKey,
    Checkpoint,
    Collaboration,
    CollaborationMember,
    Contribution,
    Delta,
    IdempotencyRecord,
    Job,
    JobParticipant,
    JobStatus,
    MemberStatus,
    Organization,
    utcnow,
)

KEY_PREFIX = "glk_"


def hash_key(key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, org_name: str, admin: bool = False) -> tuple[Organization, str]:
    """A new API key for the organization `org_name` (made if missing); the key is returned only here.
    An admin key is the provider's: it reaches the /v1/admin routes too."""
    org = session.scalar(select(Organization).where(Organization.name == org_name))
    if org is None:
        org = Organization(name=org_name)
        session.add(org)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(org_id=org.id, key_hash=hash_key(key), prefix=key[:12], admin=admin))
    session.flush()
    return org, key


def list_keys(session: Session, org_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every API key (or one organization's) with its organization's name, oldest first."""
    query = select(ApiKey, Organization.name).join(Organization, Organization.id == ApiKey.org_id)
    if org_name is not None:
        query = query.where(Organization.name == org_name)
    return [(key, name) for key, name in session.execute(query.order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revoke a key by its id (revoking it again changes nothing); None when there is no such key."""
    key = session.get(ApiKey, key_id)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def rotate_key(session: Session, key_id: str) -> tuple[ApiKey, str] | None:
    """A new key for the organization of `key_id`, which is revoked: (the old key's row, the new key)."""
    old = session.get(ApiKey, key_id)
    if old is None:
        return None
    org = session.get(Organization, old.org_id)
    _, key = create_key(session, org.name, old.admin)  # a provider's key stays a provider's
    revoke_key(session, key_id)
    return old, key


def org_for_key(session: Session, key: str) -> Organization | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return session.get(Organization, row.org_id) if row is not None else None


def admin_org_for_key(session: Session, key: str) -> Organization | None:
    """The organization of a valid admin key; None for any other key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None),
                                              ApiKey.admin.is_(True)))
    return session.get(Organization, row.org_id) if row is not None else None


def _joined(org_id: str) -> Select:
    """The ids of the collaborations the organization has joined (an invitation alone shows nothing)."""
    return select(CollaborationMember.collaboration_id).where(
        CollaborationMember.org_id == org_id, CollaborationMember.status == MemberStatus.joined.value)


def _readable_by(table: type, org_id: str) -> ColumnElement[bool]:
    """The one rule of who reads what: an organization reads its own rows; and a pooled upgrade (its job
    and its delta) belongs to the members who took part when it was made, the organizations whose
    contributions went in, for as long as they stay joined. A member that joins later, one that left, one
    only invited, reads none of it. Everything else reads as absent."""
    if table is Job or table is Delta:
        job_id = Job.id if table is Job else Delta.job_id
        took_part = select(JobParticipant.job_id).where(JobParticipant.org_id == org_id)
        return or_(table.org_id == org_id,
                   table.collaboration_id.in_(_joined(org_id)) & job_id.in_(took_part))
    return table.org_id == org_id


def readable(session: Session, table: type, org_id: str, row_id: str):
    """A row by id, if the organization may read it; None otherwise (another's id reads as absent)."""
    return session.scalar(select(table).where(table.id == row_id, _readable_by(table, org_id)))


def list_readable(session: Session, table: type, org_id: str, limit: int) -> list:
    """The rows an organization may read, newest first."""
    query = select(table).where(_readable_by(table, org_id)).order_by(table.created_at.desc(), table.id)
    return list(session.scalars(query.limit(limit)))


def get_checkpoint(session: Session, org_id: str, checkpoint_id: str) -> Checkpoint | None:
    return readable(session, Checkpoint, org_id, checkpoint_id)


def list_checkpoints(session: Session, org_id: str, limit: int) -> list[Checkpoint]:
    return list_readable(session, Checkpoint, org_id, limit)


def checkpoint_in_use(session: Session, checkpoint: Checkpoint) -> bool:
    """Whether a queued or running job reads this checkpoint (a pooled one may belong to another member)."""
    active = select(Job).where(Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
    return any(item["id"] == checkpoint.id for job in session.scalars(active) for item in job.inputs)


def contribution_in_use(session: Session, contribution: Contribution) -> bool:
    """Whether a queued or running pooled job of the contribution's collaboration reads it."""
    active = select(Job).where(Job.collaboration_id == contribution.collaboration_id,
                               Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))
    return any(item["id"] == contribution.checkpoint_id for job in session.scalars(active) for item in job.inputs)


def collaboration_outputs(session: Session, collaboration_id: str) -> tuple[int, int]:
    """(pooled deltas, upgrades queued or running) of a collaboration."""
    deltas = session.scalar(select(func.count()).select_from(Delta).where(Delta.collaboration_id == collaboration_id))
    active = session.scalar(select(func.count()).select_from(Job).where(
        Job.collaboration_id == collaboration_id, Job.status.in_([JobStatus.queued.value, JobStatus.running.value])))
    return int(deltas or 0), int(active or 0)


def lock_blob(session: Session, sha256: str) -> None:
    """Hold the blob's lock until the session's transaction ends. Whoever makes a row point at a blob, or
    removes a blob no row points at, holds it from before it looks until after it commits, so an upload
    of the same bytes and a delete never interleave (a row whose blob is gone). PostgreSQL: a transaction
    advisory lock on the hash; SQLite: the database's write lock, which every transaction here takes at
    BEGIN IMMEDIATE (app.db.session)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(sha256[:15], 16)})
    else:
        session.execute(text("SELECT 1"))  # begins the transaction, if nothing has yet


def blob_referenced(session: Session, sha256: str) -> bool:
    """Whether any checkpoint still points at a blob, as its adapter or its prompts, or an unfinished job
    at its prompts (blobs are shared by identical uploads)."""
    query = select(func.count()).select_from(Checkpoint).where(
        (Checkpoint.sha256 == sha256) | (Checkpoint.prompts_sha256 == sha256))
    unfinished = select(func.count()).select_from(Job).where(
        Job.prompts_sha256 == sha256, Job.status.not_in([s.value for s in TERMINAL]))
    return bool(session.scalar(query)) or bool(session.scalar(unfinished))


def get_delta(session: Session, org_id: str, delta_id: str) -> Delta | None:
    return readable(session, Delta, org_id, delta_id)


def list_deltas(session: Session, org_id: str, limit: int) -> list[Delta]:
    return list_readable(session, Delta, org_id, limit)


def get_organization(session: Session, org_id: str) -> Organization | None:
    return session.get(Organization, org_id)


# ---- collaborations: members see them; an invitation is visible to the invited organization too ----

def create_collaboration(session: Session, org_id: str, name: str, pair: str) -> Collaboration:
    """A new collaboration; the organization making it is its first member, joined."""
    now = utcnow()
    collaboration = Collaboration(org_id=org_id, name=name, pair=pair, created_at=now)
    session.add(collaboration)
    session.flush()
    session.add(CollaborationMember(collaboration_id=collaboration.id, org_id=org_id,
                                    status=MemberStatus.joined.value, invited_at=now, joined_at=now))
    session.flush()
    return collaboration


def membership(session: Session, org_id: str, collaboration_id: str) -> CollaborationMember | None:
    """The organization's place in a collaboration (invited or joined), or None."""
    query = select(CollaborationMember).where(CollaborationMember.collaboration_id == collaboration_id,
                                              CollaborationMember.org_id == org_id)
    return session.scalar(query)


def get_collaboration(session: Session, org_id: str, collaboration_id: str) -> Collaboration | None:
    """A collaboration the organization belongs to or is invited to; None otherwise."""
    if membership(session, org_id, collaboration_id) is None:
        return None
    return session.get(Collaboration, collaboration_id)


def list_collaborations(session: Session, org_id: str, limit: int) -> list[Collaboration]:
    mine = select(CollaborationMember.collaboration_id).where(CollaborationMember.org_id == org_id)
    query = select(Collaboration).where(Collaboration.id.in_(mine))
    return list(session.scalars(query.order_by(Collaboration.created_at.desc(), Collaboration.id).limit(limit)))


def members(session: Session, collaboration_id: str) -> list[tuple[CollaborationMember, str]]:
    """Members with their organizations' names, in the order they were invited."""
    query = (select(CollaborationMember, Organization.name)
             .join(Organization, Organization.id == CollaborationMember.org_id)
             .where(CollaborationMember.collaboration_id == collaboration_id)
             .order_by(CollaborationMember.invited_at, CollaborationMember.id))
    return [(member, name) for member, name in session.execute(query)]


def invite(session: Session, collaboration_id: str, org_id: str) -> CollaborationMember:
    member = CollaborationMember(collaboration_id=collaboration_id, org_id=org_id,
                                 status=MemberStatus.invited.value, invited_at=utcnow())
    session.add(member)
    session.flush()
    return member


def join(session: Session, member: CollaborationMember) -> None:
    if member.status != MemberStatus.joined:
        member.status, member.joined_at = MemberStatus.joined.value, utcnow()
        session.flush()


def contributions(session: Session, collaboration_id: str) -> list[Contribution]:
    query = select(Contribution).where(Contribution.collaboration_id == collaboration_id)
    return list(session.scalars(query.order_by(Contribution.created_at, Contribution.id)))


def get_contribution(session: Session, collaboration_id: str, contribution_id: str) -> Contribution | None:
    row = session.get(Contribution, contribution_id)
    return row if row is not None and row.collaboration_id == collaboration_id else None


def contribution_of(session: Session, collaboration_id: str, org_id: str) -> Contribution | None:
    query = select(Contribution).where(Contribution.collaboration_id == collaboration_id,
                                       Contribution.org_id == org_id)
    return session.scalar(query)


def contribute(session: Session, collaboration_id: str, checkpoint: Checkpoint) -> Contribution:
    """Put a checkpoint into a collaboration in its owner's name (only its owner calls this)."""
    row = Contribution(collaboration_id=collaboration_id, org_id=checkpoint.org_id, checkpoint_id=checkpoint.id,
                       created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def pooled_inputs(session: Session, collaboration_id: str) -> list[dict[str, Any]]:
    """The contributed checkpoints as a job's inputs, in the order they were contributed, each with the
    organization that contributed it (`org_id`: the job's participants, not kept in its inputs)."""
    query = (select(Checkpoint.id, Checkpoint.sha256, Checkpoint.privacy, Contribution.org_id)
             .join(Contribution, Contribution.checkpoint_id == Checkpoint.id)
             .where(Contribution.collaboration_id == collaboration_id)
             .order_by(Contribution.created_at, Contribution.id))
    return [{"id": row.id, "sha256": row.sha256, "privacy": row.privacy, "org_id": row.org_id}
            for row in session.execute(query)]


def find_idempotent(session: Session, org_id: str, scope: str, key: str) -> IdempotencyRecord | None:
    query = select(IdempotencyRecord).where(IdempotencyRecord.org_id == org_id,
                                            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
    return session.scalar(query)


def remember_idempotent(session: Session, org_id: str, scope: str, key: str, fingerprint: str,
                        response: dict[str, Any]) -> None:
    session.add(IdempotencyRecord(org_id=org_id, scope=scope, key=key, fingerprint=fingerprint,
                                  response=response, created_at=utcnow()))
