"""The service's tables (SQLAlchemy 2, typed). Statuses are plain strings; timestamps are UTC."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """OpenAI-style ids: a type prefix and 24 random hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class MemberStatus(StrEnum):
    invited = "invited"
    joined = "joined"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the key's sha256 is stored; the key itself is shown once, when it is made."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("key"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # A provider's key: it reaches /v1/admin/... (tasks, shadow builds, GT training) as well.
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Checkpoint(Base):
    """An uploaded TinyLM adapter; its bytes are the blob named `sha256`."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ckpt"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    pair: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    adapter_config: Mapped[dict[str, Any] | None]
    # The privacy settings recorded in the file's metadata by `gradlift finetune` (DP-SGD, output noise).
    privacy: Mapped[dict[str, Any] | None]
    prompts_sha256: Mapped[str | None] = mapped_column(String(64), index=True)  # attached prompts (a JSONL blob)
    prompts_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Collaboration(Base):
    """Organizations pooling their checkpoints into one upgrade of one pair; `org_id` made it and invites."""

    __tablename__ = "collaborations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("collab"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    pair: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CollaborationMember(Base):
    """An organization invited to a collaboration, or one that joined it (its maker joins when making it)."""

    __tablename__ = "collaboration_members"
    __table_args__ = (UniqueConstraint("collaboration_id", "org_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collaboration_id: Mapped[str] = mapped_column(ForeignKey("collaborations.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    invited_at: Mapped[datetime] = mapped_column(default=utcnow)
    joined_at: Mapped[datetime | None]


class Contribution(Base):
    """A checkpoint its owner put into a collaboration: the owner's consent to pool it. One per organization,
    so the average weighs organizations equally; deleting the checkpoint withdraws it."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("collaboration_id", "org_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("contrib"))
    collaboration_id: Mapped[str] = mapped_column(ForeignKey("collaborations.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One upgrade. The row is the job's state; the queue only carries its id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("upg"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    pair: Mapped[str] = mapped_column(String(100))
    task: Mapped[str | None] = mapped_column(String(100))
    gt_id: Mapped[str | None] = mapped_column(String(100))  # None: no GT covers it (distillation)
    mode: Mapped[str] = mapped_column(String(16), default="auto", server_default="gt")  # gt | distill | auto
    prompts_sha256: Mapped[str | None] = mapped_column(String(64))  # the organization's prompts, if any
    prompts_count: Mapped[int | None] = mapped_column(Integer)
    inputs: Mapped[list[Any]]  # [{"id": checkpoint id, "sha256": blob, "privacy"}], fixed when the job is made
    # A pooled upgrade: its members see the job and its delta (`org_id` is the member who asked).
    collaboration_id: Mapped[str | None] = mapped_column(
        ForeignKey("collaborations.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(100), default="queued")
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    # When the job's id last went to the broker (None: not yet), and how many times it went. A queued job
    # not taken within a lease of this (doubling with each send) is sent again by the sweeper: the API may
    # have died before sending, or the broker lost it.
    sent_at: Mapped[datetime | None]
    sends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobParticipant(Base):
    """An organization whose contribution went into a pooled upgrade: the job and its delta are its (and
    the asking member's) while it stays a member. Fixed when the job is made."""

    __tablename__ = "job_participants"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True,
                                        index=True)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(100))
    progress: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)


class Delta(Base):
    """A generated LLM adapter. Immutable: its files are blobs named by their sha256."""

    __tablename__ = "deltas"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("dlt"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    # Unique: a job that runs twice (a worker died, the task came back) still makes one delta.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    collaboration_id: Mapped[str | None] = mapped_column(
        ForeignKey("collaborations.id", ondelete="CASCADE"), index=True)
    pair: Mapped[str] = mapped_column(String(100))
    task: Mapped[str | None] = mapped_column(String(100))
    gt_id: Mapped[str | None] = mapped_column(String(100))
    gt_version: Mapped[str | None] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(16), default="gt", server_default="gt")  # what made it: gt | distill
    quality: Mapped[dict[str, Any] | None]  # models/upgrade/quality.py report (verdict, agreement, similarity)
    sources: Mapped[list[Any]]  # [{"id": checkpoint id, "sha256": ...}]
    files: Mapped[dict[str, Any]]  # name -> {"sha256", "bytes"}
    verification: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyRecord(Base):
    """The first response to a create request sent with an `Idempotency-Key`, replayed on retries."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("org_id", "scope", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShadowBuild(Base):
    """A provider's request for `runs` shadow runs of one task's plan; its chunks are the workers' jobs.
    The row is the build's state; `done` counts runs on disk (reused ones included)."""

    __tablename__ = "shadow_builds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("sb"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    pair: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(100), index=True)
    plan: Mapped[dict[str, Any]]  # models.training.shadow.ShadowPlan, as a dict
    plan_key: Mapped[str] = mapped_column(String(32))
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    reused: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class ShadowChunk(Base):
    """Some runs of a build, trained in one loop by one worker; leased and heartbeated like an upgrade job."""

    __tablename__ = "shadow_chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    build_id: Mapped[str] = mapped_column(ForeignKey("shadow_builds.id", ondelete="CASCADE"), index=True)
    indices: Mapped[list[Any]]  # run indices
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class GTTraining(Base):
    """Training one Gradient Transformer on shadow runs, and measuring its card; the result is a new
    version of the GT `gt_id`, in service only once activated."""

    __tablename__ = "gt_trainings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("gtt"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    pair: Mapped[str] = mapped_column(String(100))
    tasks: Mapped[list[Any]]
    gt_id: Mapped[str] = mapped_column(String(100))
    plans: Mapped[list[Any]]  # the shadow plans trained on (from each task's latest finished build)
    options: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(100), default="queued")
    version: Mapped[str | None] = mapped_column(String(64))
    card: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class AdminEvent(Base):
    """What happened to a shadow build or a GT training, in order (`subject_id` is its id)."""

    __tablename__ = "admin_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_id: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    stage: Mapped[str] = mapped_column(String(100))
    progress: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
