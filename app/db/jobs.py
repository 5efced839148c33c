"""The job state machine, as queries: every transition is one conditional UPDATE or one transaction.

queued -> running (claimed by one worker, which keeps a heartbeat) -> succeeded | failed | cancelled.
A running job whose heartbeat is older than the lease belongs to a dead worker: it goes back to queued
and is sent again; so is a queued job that no worker took within a lease of being sent (the API died
before sending it, or the broker lost it). A claim succeeds only on a queued job or on a running one whose
lease ran out, so two live workers never run the same job, and the unique delta per job makes a repeat
harmless anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import queries
from app.db.tables import TERMINAL, Delta, Job, JobEvent, JobParticipant, JobStatus, utcnow

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run a job it has claimed."""

    job_id: str
    org_id: str
    pair: str
    task: str | None
    gt_id: str | None
    inputs: list[dict[str, str]]
    attempt: int
    collaboration_id: str | None = None  # a pooled upgrade: the collaboration's members see its delta
    mode: str = "gt"
    prompts_sha256: str | None = None  # the organization's prompts, if it attached some


def _update(session: Session, *where: Any, **values: Any) -> bool:
    """One conditional UPDATE of a job; True when it matched (exactly one row, by id)."""
    query = update(Job).where(*where).values(**values).execution_options(synchronize_session=False)
    return session.execute(query).rowcount == 1


def add_event(session: Session, job_id: str, stage: str, progress: float, message: str) -> None:
    session.add(JobEvent(job_id=job_id, stage=stage, progress=progress, message=message, created_at=utcnow()))


def create_job(session: Session, org_id: str, pair: str, task: str | None, gt_id: str | None,
               inputs: list[dict[str, str]], collaboration_id: str | None = None,
               participants: list[str] | None = None, *, mode: str = "gt",
               prompts: tuple[str, int] | None = None) -> Job:
    """A queued job, not yet sent (`mark_sent` once its id is with the broker). A pooled one records the
    organizations whose contributions it reads: with the member that asked, they are who may read it."""
    job = Job(org_id=org_id, pair=pair, task=task, gt_id=gt_id, inputs=inputs, collaboration_id=collaboration_id,
              mode=mode, prompts_sha256=prompts[0] if prompts else None, prompts_count=prompts[1] if prompts else None,
              status=JobStatus.queued.value, progress=0.0, stage="queued", cancel_requested=False, attempts=0,
              sends=0, created_at=utcnow())
    session.add(job)
    session.flush()
    session.add_all(JobParticipant(job_id=job.id, org_id=member) for member in sorted(set(participants or ())))
    pooled = f" pooled in {collaboration_id}" if collaboration_id else ""
    gt = f"GT {gt_id!r}" if gt_id else "no GT covers it"
    attached = f", {prompts[1]} prompts of the organization's" if prompts else ""
    add_event(session, job.id, "queued", 0.0, f"queued: {len(inputs)} checkpoint(s){pooled}, mode {mode}, {gt}"
              f"{attached}")
    return job


def mark_sent(session: Session, job_id: str) -> None:
    _update(session, Job.id == job_id, sent_at=utcnow(), sends=Job.sends + 1)


def _overdue(sent_at: datetime | None, created_at: datetime, sends: int, lease_s: float) -> bool:
    """Whether a queued job has waited longer than its sends allow: a lease after it was made (never sent)
    or first sent, twice that after the second send, and so on. A job waiting behind others is sent again
    a few times, not once a lease; a lost one goes again a lease later."""
    wait = lease_s * 2 ** min(max(sends - 1, 0), 10)
    return utcnow() - (sent_at or created_at) > timedelta(seconds=wait)


def unsent_job_ids(session: Session, lease_s: float) -> list[str]:
    """Queued jobs that no worker took in the time their sends allow (`_overdue`): their message never
    reached the broker, or the broker lost it, or it waits behind others."""
    stale = utcnow() - timedelta(seconds=lease_s)
    query = select(Job.id, Job.sent_at, Job.created_at, Job.sends).where(
        Job.status == JobStatus.queued.value, func.coalesce(Job.sent_at, Job.created_at) < stale)
    return [row.id for row in session.execute(query) if _overdue(row.sent_at, row.created_at, row.sends, lease_s)]


def resend(session: Session, job_id: str, lease_s: float) -> bool:
    """Mark an overdue queued job sent now (the caller sends it before committing); False when a worker
    took it meanwhile, or another sweeper sent it."""
    row = session.execute(select(Job.sent_at, Job.created_at, Job.sends).where(
        Job.id == job_id, Job.status == JobStatus.queued.value)).first()
    if row is None or not _overdue(row.sent_at, row.created_at, row.sends, lease_s):
        return False
    if not _update(session, Job.id == job_id, Job.status == JobStatus.queued.value, Job.sends == row.sends,
                   sent_at=utcnow(), sends=row.sends + 1):
        return False
    add_event(session, job_id, "queued", 0.0, "not taken by a worker in the time its sends allow; sent again")
    return True


def get_job(session: Session, org_id: str, job_id: str) -> Job | None:
    return queries.readable(session, Job, org_id, job_id)


def list_jobs(session: Session, org_id: str, limit: int) -> list[Job]:
    return queries.list_readable(session, Job, org_id, limit)


def events(session: Session, job_id: str, after: int = 0) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
    return list(session.scalars(query))


def delta_for_job(session: Session, job_id: str) -> Delta | None:
    return session.scalar(select(Delta).where(Delta.job_id == job_id))


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a queued job now, or flag a running one for its worker; False when already finished."""
    if job.status in TERMINAL:
        return False
    if job.status == JobStatus.queued:
        _finish(session, job.id, JobStatus.cancelled, "cancelled before it started")
    else:
        _update(session, Job.id == job.id, cancel_requested=True)
        add_event(session, job.id, job.stage, job.progress, "cancel requested")
    session.flush()
    session.refresh(job)
    return True


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> Claim | None:
    """Take a job for `worker`; None when it is finished or another live worker holds it."""
    now = utcnow()
    stale = now - timedelta(seconds=lease_s)
    claimable = or_(Job.status == JobStatus.queued.value,
                    (Job.status == JobStatus.running.value) & (Job.heartbeat_at < stale))
    if not _update(session, Job.id == job_id, claimable, status=JobStatus.running.value, worker=worker,
                   heartbeat_at=now, started_at=now, attempts=Job.attempts + 1, stage="starting"):
        return None
    job = session.get(Job, job_id)
    session.refresh(job)
    if job.cancel_requested:
        _finish(session, job_id, JobStatus.cancelled, "cancelled")
        return None
    add_event(session, job_id, "starting", job.progress, f"attempt {job.attempts} on {worker}")
    return Claim(job.id, job.org_id, job.pair, job.task, job.gt_id, list(job.inputs), job.attempts,
                 job.collaboration_id, job.mode, job.prompts_sha256)


def heartbeat(session: Session, job_id: str, worker: str) -> bool:
    """Extend the lease; False when the job is no longer this worker's (or was asked to cancel)."""
    held = _update(session, *_held_by(job_id, worker), heartbeat_at=utcnow())
    return held and not session.scalar(select(Job.cancel_requested).where(Job.id == job_id))


def progress(session: Session, job_id: str, worker: str, fraction: float, stage: str, message: str) -> bool:
    """Record progress and an event; returns False when the job was cancelled or taken over."""
    if not _update(session, *_held_by(job_id, worker), progress=fraction, stage=stage, heartbeat_at=utcnow()):
        return False
    add_event(session, job_id, stage, fraction, message)
    return not session.scalar(select(Job.cancel_requested).where(Job.id == job_id))


def _held_by(job_id: str, worker: str) -> tuple[Any, ...]:
    return Job.id == job_id, Job.worker == worker, Job.status == JobStatus.running.value


def succeed(session: Session, claim_: Claim, worker: str, delta: Delta) -> str | None:
    """Store the delta and finish the job in one transaction; returns the delta id, None if superseded."""
    job = session.get(Job, claim_.job_id, with_for_update=True)
    if job is None or job.status != JobStatus.running or job.worker != worker or job.cancel_requested:
        return None
    session.add(delta)
    try:
        session.flush()
    except IntegrityError:  # another attempt stored this job's delta first
        session.rollback()
        return None
    _finish(session, job.id, JobStatus.succeeded, f"stored delta {delta.id}")
    return delta.id


def fail(session: Session, job_id: str, worker: str | None, code: str, message: str) -> None:
    _finish(session, job_id, JobStatus.failed, message, code=code, worker=worker)


def cancelled(session: Session, job_id: str, worker: str) -> None:
    _finish(session, job_id, JobStatus.cancelled, "cancelled while running", worker=worker)


def _finish(session: Session, job_id: str, status: JobStatus, message: str, *, code: str | None = None,
            worker: str | None = None) -> None:
    values: dict[str, Any] = {"status": status.value, "stage": status.value, "finished_at": utcnow()}
    if status == JobStatus.succeeded:
        values["progress"] = 1.0
    if status == JobStatus.failed:
        values.update(error_code=code, error_message=message)
    where = [Job.id == job_id, Job.status.not_in([s.value for s in TERMINAL])]
    if worker is not None:
        where.append(Job.worker == worker)
    if _update(session, *where, **values):
        job = session.get(Job, job_id)
        session.refresh(job)
        add_event(session, job_id, status.value, job.progress, message)


def running_job_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.status == JobStatus.running.value)))


def stale_job_ids(session: Session, lease_s: float) -> list[str]:
    """Running jobs whose worker sent no heartbeat within the lease: their worker is gone."""
    stale = utcnow() - timedelta(seconds=lease_s)
    query = select(Job.id).where(Job.status == JobStatus.running.value, Job.heartbeat_at < stale)
    return list(session.scalars(query))


def requeue(session: Session, job_id: str, lease_s: float) -> bool:
    """Put a stale running job back to queued (the caller sends it again before committing); a job
    that has lost its worker MAX_ATTEMPTS times (say, it kills the process every time) fails instead."""
    stale = utcnow() - timedelta(seconds=lease_s)
    attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
    if attempts is not None and attempts >= MAX_ATTEMPTS:
        where = [Job.id == job_id, Job.status == JobStatus.running.value, Job.heartbeat_at < stale]
        message = f"its worker was lost {attempts} times; gave up"
        values = {"status": JobStatus.failed.value, "stage": "failed", "finished_at": utcnow(),
                  "error_code": "worker_lost", "error_message": message}
        if _update(session, *where, **values):
            add_event(session, job_id, "failed", 0.0, message)
        return False
    if not _update(session, Job.id == job_id, Job.status == JobStatus.running.value, Job.heartbeat_at < stale,
                   status=JobStatus.queued.value, stage="queued", worker=None, sent_at=utcnow(), sends=1):
        return False
    add_event(session, job_id, "queued", 0.0, f"worker lost (no heartbeat for {lease_s:g}s); queued again")
    return True
