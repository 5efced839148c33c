"""The provider's jobs as queries: shadow builds (split into chunks that workers lease) and GT trainings.

A chunk and a GT training follow the upgrade job's life (app/db/jobs.py): queued -> running (held by one
worker, which keeps a heartbeat) -> succeeded | failed | cancelled; a running one whose heartbeat is older
than the lease goes back to queued and is sent again. A build is the sum of its chunks: running once one
starts, succeeded when all have, failed when one fails, cancelled on request (running chunks stop at their
next step). Every transition is one conditional UPDATE, or a transaction holding the build's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.db.tables import TERMINAL, AdminEvent, GTTraining, JobStatus, ShadowBuild, ShadowChunk, utcnow

MAX_ATTEMPTS = 3
Leased = type[ShadowChunk] | type[GTTraining]
ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


def add_event(session: Session, subject_id: str, stage: str, progress: float, message: str) -> None:
    session.add(AdminEvent(subject_id=subject_id, stage=stage, progress=progress, message=message,
                           created_at=utcnow()))


def events(session: Session, subject_id: str, after: int = 0) -> list[AdminEvent]:
    query = select(AdminEvent).where(AdminEvent.subject_id == subject_id, AdminEvent.id > after)
    return list(session.scalars(query.order_by(AdminEvent.id)))


def _update(session: Session, table: type, *where: Any, **values: Any) -> bool:
    query = update(table).where(*where).values(**values).execution_options(synchronize_session=False)
    return session.execute(query).rowcount == 1


# ---- leases, the same for chunks and GT trainings ----

def claim(session: Session, table: Leased, row_id: int | str, worker: str, lease_s: float) -> bool:
    """Take a queued row, or a running one whose worker went silent, for `worker`."""
    now = utcnow()
    claimable = or_(table.status == JobStatus.queued.value,
                    (table.status == JobStatus.running.value) & (table.heartbeat_at < now - timedelta(seconds=lease_s)))
    return _update(session, table, table.id == row_id, claimable, status=JobStatus.running.value, worker=worker,
                   heartbeat_at=now, attempts=table.attempts + 1)


def held(session: Session, table: Leased, row_id: int | str, worker: str) -> bool:
    """Extend the lease; False when the row is no longer this worker's."""
    return _update(session, table, table.id == row_id, table.worker == worker,
                   table.status == JobStatus.running.value, heartbeat_at=utcnow())


def stale_ids(session: Session, table: Leased, lease_s: float) -> list:
    stale = utcnow() - timedelta(seconds=lease_s)
    return list(session.scalars(select(table.id).where(table.status == JobStatus.running.value,
                                                       table.heartbeat_at < stale)))


def requeue(session: Session, table: Leased, row_id: int | str, lease_s: float) -> bool:
    """Put a stale running row back to queued (the caller sends it again); False if it is not stale or has
    lost its worker MAX_ATTEMPTS times (then it fails: it may be what kills the worker)."""
    stale = utcnow() - timedelta(seconds=lease_s)
    row = session.get(table, row_id)
    if row is None or row.status != JobStatus.running or row.heartbeat_at is None or row.heartbeat_at >= stale:
        return False
    if row.attempts >= MAX_ATTEMPTS:
        fail(session, table, row_id, None, "worker_lost", f"its worker was lost {row.attempts} times; gave up")
        return False
    if not _update(session, table, table.id == row_id, table.status == JobStatus.running.value,
                   table.heartbeat_at < stale, status=JobStatus.queued.value, worker=None):
        return False
    add_event(session, subject(row), "queued", _progress(session, row),
              f"{_label(row)}: worker lost (no heartbeat for {lease_s:g}s); queued again")
    return True


def fail(session: Session, table: Leased, row_id: int | str, worker: str | None, code: str, message: str) -> None:
    """A chunk's failure fails its build (the rest of it is cancelled); a training's fails the training."""
    where = [table.id == row_id, table.status.in_(ACTIVE)]
    if worker is not None:
        where.append(table.worker == worker)
    if not _update(session, table, *where, status=JobStatus.failed.value, finished_at=utcnow()):
        return
    row = session.get(table, row_id)
    session.refresh(row)
    if isinstance(row, ShadowChunk):
        _finish_build(session, row.build_id, JobStatus.failed, f"{_label(row)} failed: {message}", code=code)
        session.execute(update(ShadowChunk).where(ShadowChunk.build_id == row.build_id,
                                                  ShadowChunk.status == JobStatus.queued.value)
                        .values(status=JobStatus.cancelled.value))
    else:
        _update(session, GTTraining, GTTraining.id == row_id, stage="failed", error_code=code, error_message=message)
        add_event(session, row.id, "failed", row.progress, message)


def subject(row: ShadowChunk | GTTraining) -> str:
    """The id events are filed under: a chunk's build, or the training itself."""
    return row.build_id if isinstance(row, ShadowChunk) else row.id


def _label(row: ShadowChunk | GTTraining) -> str:
    if isinstance(row, ShadowChunk):
        return f"runs {row.indices[0]}-{row.indices[-1]}"
    return "training"


def _progress(session: Session, row: ShadowChunk | GTTraining) -> float:
    if isinstance(row, GTTraining):
        return row.progress
    build = session.get(ShadowBuild, row.build_id)
    return build.done / build.total


# ---- shadow builds ----

@dataclass(frozen=True)
class ChunkClaim:
    chunk_id: int
    build_id: str
    pair: str
    plan: dict[str, Any]
    indices: list[int]
    attempt: int


def create_build(session: Session, org_id: str, pair: str, task: str, plan: dict[str, Any], plan_key: str,
                 total: int, existing: set[int], chunk_size: int) -> tuple[ShadowBuild, list[int]]:
    """A build and its chunks of missing runs (runs already on disk count as done); (build, chunk ids)."""
    missing = [i for i in range(total) if i not in existing]
    now = utcnow()
    build = ShadowBuild(org_id=org_id, pair=pair, task=task, plan=plan, plan_key=plan_key, total=total,
                        done=total - len(missing), reused=total - len(missing), cancel_requested=False,
                        status=JobStatus.queued.value if missing else JobStatus.succeeded.value, created_at=now,
                        finished_at=None if missing else now)
    session.add(build)
    session.flush()
    chunks = [ShadowChunk(build_id=build.id, indices=missing[i:i + chunk_size], status=JobStatus.queued.value,
                          attempts=0) for i in range(0, len(missing), chunk_size)]
    session.add_all(chunks)
    session.flush()
    reused = f"; {build.reused} already on disk" if build.reused else ""
    add_event(session, build.id, build.status, build.done / total,
              f"{total} runs of {task} on {pair} (plan {plan_key}): {len(chunks)} chunk(s) to train{reused}")
    return build, [c.id for c in chunks]


def chunk_counts(session: Session, build_id: str) -> dict[str, int]:
    rows = session.execute(select(ShadowChunk.status, func.count()).where(ShadowChunk.build_id == build_id)
                           .group_by(ShadowChunk.status))
    return {status: int(n) for status, n in rows}


def claim_chunk(session: Session, chunk_id: int, worker: str, lease_s: float) -> ChunkClaim | None:
    """Take a chunk; None when it is finished, held by a live worker, or its build was cancelled."""
    if not claim(session, ShadowChunk, chunk_id, worker, lease_s):
        return None
    chunk = session.get(ShadowChunk, chunk_id)
    session.refresh(chunk)
    build = session.get(ShadowBuild, chunk.build_id, with_for_update=True)
    if build.cancel_requested or build.status in TERMINAL:
        stop_chunk(session, chunk_id, worker)
        return None
    if build.status == JobStatus.queued:
        build.status, build.started_at = JobStatus.running.value, utcnow()
    add_event(session, build.id, "running", build.done / build.total,
              f"{_label(chunk)} on {worker} (attempt {chunk.attempts})")
    return ChunkClaim(chunk.id, build.id, build.pair, dict(build.plan), list(chunk.indices), chunk.attempts)


def chunk_held(session: Session, chunk_id: int, worker: str) -> bool:
    """Extend the chunk's lease; False when it is no longer this worker's or its build was cancelled."""
    if not held(session, ShadowChunk, chunk_id, worker):
        return False
    build_id = session.scalar(select(ShadowChunk.build_id).where(ShadowChunk.id == chunk_id))
    return not session.scalar(select(ShadowBuild.cancel_requested).where(ShadowBuild.id == build_id))


def finish_chunk(session: Session, chunk_id: int, worker: str) -> bool:
    """Count a trained chunk into its build (which succeeds with its last chunk); False if superseded."""
    chunk = session.get(ShadowChunk, chunk_id)
    build = session.get(ShadowBuild, chunk.build_id, with_for_update=True)  # one chunk counts at a time
    if not _update(session, ShadowChunk, ShadowChunk.id == chunk_id, ShadowChunk.worker == worker,
                   ShadowChunk.status == JobStatus.running.value, status=JobStatus.succeeded.value,
                   finished_at=utcnow()):
        return False
    build.done += len(chunk.indices)
    session.flush()
    add_event(session, build.id, "running", build.done / build.total,
              f"{_label(chunk)} written: {build.done} of {build.total} runs")
    if build.done >= build.total:
        _finish_build(session, build.id, JobStatus.succeeded, f"all {build.total} runs on disk")
    return True


def stop_chunk(session: Session, chunk_id: int, worker: str) -> None:
    """A chunk its worker gave up because the build was cancelled; the build ends when none runs."""
    if _update(session, ShadowChunk, ShadowChunk.id == chunk_id, ShadowChunk.worker == worker,
               ShadowChunk.status == JobStatus.running.value, status=JobStatus.cancelled.value, finished_at=utcnow()):
        build_id = session.scalar(select(ShadowChunk.build_id).where(ShadowChunk.id == chunk_id))
        if not chunk_counts(session, build_id).get(JobStatus.running.value):
            _finish_build(session, build_id, JobStatus.cancelled, "cancelled")


def cancel_build(session: Session, build: ShadowBuild) -> bool:
    """Cancel a build: its queued chunks now, its running ones at their next step; False if it had ended."""
    if build.status in TERMINAL:
        return False
    _update(session, ShadowBuild, ShadowBuild.id == build.id, cancel_requested=True)
    session.execute(update(ShadowChunk).where(ShadowChunk.build_id == build.id,
                                              ShadowChunk.status == JobStatus.queued.value)
                    .values(status=JobStatus.cancelled.value, finished_at=utcnow()))
    if chunk_counts(session, build.id).get(JobStatus.running.value):
        add_event(session, build.id, build.status, build.done / build.total, "cancel requested")
    else:
        _finish_build(session, build.id, JobStatus.cancelled, "cancelled before its chunks ran")
    session.flush()
    session.refresh(build)
    return True


def _finish_build(session: Session, build_id: str, status: JobStatus, message: str, code: str | None = None) -> None:
    values: dict[str, Any] = {"status": status.value, "finished_at": utcnow()}
    if status == JobStatus.failed:
        values |= {"error_code": code, "error_message": message}
    if _update(session, ShadowBuild, ShadowBuild.id == build_id,
               ShadowBuild.status.not_in([s.value for s in TERMINAL]), **values):
        build = session.get(ShadowBuild, build_id)
        session.refresh(build)
        add_event(session, build_id, status.value, build.done / build.total, message)


def latest_build(session: Session, pair: str, task: str) -> ShadowBuild | None:
    """The task's newest succeeded build: the shadow runs a GT training on it uses."""
    query = select(ShadowBuild).where(ShadowBuild.pair == pair, ShadowBuild.task == task,
                                      ShadowBuild.status == JobStatus.succeeded.value)
    return session.scalar(query.order_by(ShadowBuild.finished_at.desc(), ShadowBuild.id).limit(1))


def list_rows(session: Session, table: type, limit: int) -> list:
    return list(session.scalars(select(table).order_by(table.created_at.desc(), table.id).limit(limit)))


# ---- GT trainings ----

def create_training(session: Session, org_id: str, pair: str, tasks: list[str], gt_id: str,
                    plans: list[dict[str, Any]], options: dict[str, Any]) -> GTTraining:
    row = GTTraining(org_id=org_id, pair=pair, tasks=tasks, gt_id=gt_id, plans=plans, options=options,
                     status=JobStatus.queued.value, progress=0.0, stage="queued", cancel_requested=False,
                     attempts=0, created_at=utcnow())
    session.add(row)
    session.flush()
    add_event(session, row.id, "queued", 0.0, f"GT {gt_id!r} on {', '.join(tasks)} ({pair})")
    return row


def claim_training(session: Session, training_id: str, worker: str, lease_s: float) -> GTTraining | None:
    if not claim(session, GTTraining, training_id, worker, lease_s):
        return None
    row = session.get(GTTraining, training_id)
    session.refresh(row)
    if row.cancel_requested:
        finish_training(session, training_id, worker, JobStatus.cancelled, "cancelled")
        return None
    _update(session, GTTraining, GTTraining.id == training_id, started_at=utcnow(), stage="starting")
    add_event(session, training_id, "starting", row.progress, f"attempt {row.attempts} on {worker}")
    return row


def training_progress(session: Session, training_id: str, worker: str, fraction: float, stage: str) -> bool:
    """Record progress (and an event); False when the training was cancelled or taken over."""
    if not _update(session, GTTraining, GTTraining.id == training_id, GTTraining.worker == worker,
                   GTTraining.status == JobStatus.running.value, progress=fraction, stage=stage,
                   heartbeat_at=utcnow()):
        return False
    add_event(session, training_id, stage, fraction, stage)
    return not session.scalar(select(GTTraining.cancel_requested).where(GTTraining.id == training_id))


def training_held(session: Session, training_id: str, worker: str) -> bool:
    if not held(session, GTTraining, training_id, worker):
        return False
    return not session.scalar(select(GTTraining.cancel_requested).where(GTTraining.id == training_id))


def finish_training(session: Session, training_id: str, worker: str, status: JobStatus, message: str,
                    version: str | None = None, card: dict | None = None) -> bool:
    values: dict[str, Any] = {"status": status.value, "stage": status.value, "finished_at": utcnow()}
    if status == JobStatus.succeeded:
        values |= {"progress": 1.0, "version": version, "card": card}
    if not _update(session, GTTraining, GTTraining.id == training_id, GTTraining.worker == worker,
                   GTTraining.status == JobStatus.running.value, **values):
        return False
    add_event(session, training_id, status.value, values.get("progress", 0.0), message)
    return True


def cancel_training(session: Session, row: GTTraining) -> bool:
    if row.status in TERMINAL:
        return False
    if row.status == JobStatus.queued:
        _update(session, GTTraining, GTTraining.id == row.id, GTTraining.status == JobStatus.queued.value,
                status=JobStatus.cancelled.value, stage="cancelled", finished_at=utcnow())
        add_event(session, row.id, "cancelled", row.progress, "cancelled before it started")
    else:
        _update(session, GTTraining, GTTraining.id == row.id, cancel_requested=True)
        add_event(session, row.id, row.stage, row.progress, "cancel requested")
    session.flush()
    session.refresh(row)
    return True
