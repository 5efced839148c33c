"""The upgrade job as plain functions: claim, run the GT through `models`, store the delta, finish.

Idempotent per job id: a finished job, or one a live worker holds, is left alone; a job whose worker died
is claimed again after its lease runs out; the delta table's unique job id keeps it to one delta.
Models are imported on first use, inside the forked worker process, never at import time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from app import prompts, queue
from app.config import get_settings
from app.db import jobs, queries
from app.db.session import session_scope
from app.db.tables import Delta, Job, utcnow
from app.storage import BlobStore
from workers.lease import Lease, beat

log = logging.getLogger(__name__)

RUN_SHARE = 0.9  # of the job's progress bar: the GT run; the rest is loading and storing
INTERNAL = "the upgrade failed on the server; its operators find the reason in the worker's log"


class JobStopped(Exception):
    """The job was cancelled, or another worker took it over, while this one ran it."""


class Reporter:
    """The `on_progress(fraction, stage)` callback given to the ML core: writes progress and events."""

    def __init__(self, job_id: str, worker: str, heartbeat: Lease) -> None:
        self.job_id, self.worker, self.heartbeat = job_id, worker, heartbeat
        self._last = (-1.0, "", 0.0)

    def __call__(self, fraction: float, stage: str, message: str | None = None) -> None:
        self.report(0.05 + RUN_SHARE * min(max(fraction, 0.0), 1.0), stage, message)

    def report(self, progress: float, stage: str, message: str | None = None) -> None:
        if self.heartbeat.stopped.is_set():
            raise JobStopped
        last_progress, last_stage, last_time = self._last
        if message is None and stage == last_stage and progress - last_progress < 0.05 \
                and time.monotonic() - last_time < 2:
            return  # keep the event list readable: stage changes, 5% steps, or every 2 s
        self._last = (progress, stage, time.monotonic())
        with session_scope() as session:
            if not jobs.progress(session, self.job_id, self.worker, progress, stage,
                                 message or f"{stage} ({progress:.0%})"):
                raise JobStopped


def run_job(job_id: str, worker: str) -> None:
    settings = get_settings()
    with session_scope() as session:
        claim = jobs.claim(session, job_id, worker, settings.job_lease_s)
    if claim is None:
        log.info("job %s is finished or held by a live worker; nothing to do", job_id)
        return
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    for earlier in store.work_dirs(job_id):  # an attempt that died mid-job (this claim means it is gone)
        store.discard(earlier)
    out_dir = store.work_dir(job_id)
    try:
        with Lease(beat(jobs.heartbeat, job_id, worker), settings.job_lease_s / 4, job_id) as heartbeat:
            reporter = Reporter(job_id, worker, heartbeat)
            delta = _generate(claim, store, out_dir, reporter)
            reporter.report(0.97, "storing", "verified; storing the delta")
            with session_scope() as session:
                delta_id = jobs.succeed(session, claim, worker, delta)
        log.info("job %s: %s", job_id, f"stored {delta_id}" if delta_id else "superseded; nothing stored")
    except JobStopped:
        _stopped(job_id, worker)
    except SoftTimeLimitExceeded:
        _fail(job_id, worker, "timeout", f"ran past the time limit of {settings.job_time_limit_s}s")
    except Exception as exc:
        from models.errors import GradliftError

        if not isinstance(exc, GradliftError):  # its text may name this machine's paths: kept in the log
            log.exception("job %s failed", job_id)
        _fail(job_id, worker, _error_code(exc), str(exc) if isinstance(exc, GradliftError) else INTERNAL)
    finally:
        store.discard(out_dir)


def _generate(claim: jobs.Claim, store: BlobStore, out_dir: Path, reporter: Reporter) -> Delta:
    """Run the GT on the job's inputs and put the verified files in the store; the Delta row, unsaved."""
    from models.device import resolve_device
    from models.errors import NotFoundError
    from models.pairs import PairStore
    from models.upgrade import run_upgrade

    settings = get_settings()
    reporter.report(0.01, "loading", f"loading pair {claim.pair!r} and GT {claim.gt_id!r}")
    pair = PairStore(settings.pairs_dir).get(claim.pair)
    paths = [store.path(item["sha256"]) for item in claim.inputs]
    missing = [item["id"] for item, path in zip(claim.inputs, paths, strict=True) if not path.is_file()]
    if missing:
        raise NotFoundError(f"the stored adapter of checkpoint {missing[0]!r} is missing")
    attached = prompts.load(store, claim.prompts_sha256) if claim.prompts_sha256 else None
    result = run_upgrade(pair, claim.gt_id, paths, out_dir, on_progress=reporter,
                         device=resolve_device(settings.device), mode=claim.mode, prompts=attached, task=claim.task)
    files = {}
    for name, path in sorted(result.files.items()):
        sha256, size = store.put_file(Path(path))
        files[name] = {"sha256": sha256, "bytes": size}
    quality = result.quality
    reporter.report(0.96, "judged", f"delivering the {result.mode} update: {quality['verdict']} "
                    f"({quality['reason']})")
    return Delta(org_id=claim.org_id, job_id=claim.job_id, collaboration_id=claim.collaboration_id,
                 pair=claim.pair, task=claim.task, gt_id=result.gt_id,
                 gt_version=result.gt_version, mode=result.mode, quality=quality, sources=claim.inputs,
                 files=files, verification=dict(result.verification), created_at=utcnow())


def _error_code(exc: Exception) -> str:
    name = type(exc).__name__
    codes = {"VerificationError": "verification_failed", "AdapterError": "invalid_adapter",
             "NotFoundError": "not_found", "ConfigError": "invalid_config"}
    return codes.get(name, "internal_error")


def _stopped(job_id: str, worker: str) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is not None and job.cancel_requested:
            jobs.cancelled(session, job_id, worker)
            log.info("job %s cancelled", job_id)
        else:
            log.warning("job %s was taken over by another worker; leaving it", job_id)


def _fail(job_id: str, worker: str, code: str, message: str) -> None:
    with session_scope() as session:
        jobs.fail(session, job_id, worker, code, message)


def sweep() -> list[str]:
    """Send again the running jobs whose worker stopped sending heartbeats (queued anew), and the queued
    jobs no worker took within a lease of being sent; returns their ids. A job sent twice still runs once:
    only one claim of it succeeds."""
    lease_s = get_settings().job_lease_s
    with session_scope() as session:
        stale, unsent = jobs.stale_job_ids(session, lease_s), jobs.unsent_job_ids(session, lease_s)
    sent = []
    for job_id, mark in [*((j, jobs.requeue) for j in stale), *((j, jobs.resend) for j in unsent)]:
        # Send before commit: if sending fails the job stays as it was and the next sweep tries again.
        with session_scope() as session:
            if mark(session, job_id, lease_s):
                queue.send(queue.UPGRADE_TASK, job_id=job_id)
                sent.append(job_id)
    if sent:
        log.warning("sent again jobs that lost their worker or their message: %s", ", ".join(sent))
    _tidy_scratch(lease_s)
    return sent


def _tidy_scratch(lease_s: float) -> None:
    """Remove the scratch folders of attempts that died, once their job is no longer running (and the
    folder is older than a lease, so a claim that is just starting keeps its new one); put back a blob a
    delete set aside and died before committing, if a row still points at it."""
    settings = get_settings()
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    for sha256, aside in store.set_aside(lease_s):
        with session_scope() as session:
            queries.lock_blob(session, sha256)
            if queries.blob_referenced(session, sha256) and not store.exists(sha256):
                log.warning("restoring blob %s: its delete died before committing", sha256)
                store.restore(sha256, aside)
            else:
                aside.unlink(missing_ok=True)
    old = [p for p in store.work_dirs() if time.time() - p.stat().st_mtime > lease_s]
    if not old:
        return
    with session_scope() as session:
        running = set(jobs.running_job_ids(session))
    for path in old:
        if path.name.rsplit("-", 1)[0] not in running:
            log.info("removing %s, left by an upgrade attempt that died", path.name)
            store.discard(path)
