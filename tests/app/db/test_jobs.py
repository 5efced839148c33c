"""The job state machine on a real (SQLite) database: claims, leases, cancel, one delta per job."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import jobs, queries
from app.db.migrate import upgrade_head
from app.db.session import session_scope
from app.db.tables import Delta, Job, JobStatus, utcnow

LEASE = 30.0


@pytest.fixture
def job_id(service_env: Settings) -> Iterator[str]:
    upgrade_head()
    with session_scope() as s:
        org, _ = queries.create_key(s, "acme")
        job = jobs.create_job(s, org.id, "toy", None, "all", [{"id": "ckpt_1", "sha256": "0" * 64}])
    yield job.id


def status(job_id: str) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


def make_delta(claim: jobs.Claim) -> Delta:
    return Delta(org_id=claim.org_id, job_id=claim.job_id, pair="toy", task=None, gt_id="all",
                 gt_version="v", sources=claim.inputs, files={}, verification={}, created_at=utcnow())


def age_heartbeat(job_id: str, seconds: float) -> None:
    with session_scope() as s:
        earlier = utcnow() - timedelta(seconds=seconds)
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=earlier))


def test_one_live_claim_at_a_time(job_id: str) -> None:
    with session_scope() as s:
        first = jobs.claim(s, job_id, "w1", LEASE)
    with session_scope() as s:
        assert jobs.claim(s, job_id, "w2", LEASE) is None
    assert first is not None and first.attempt == 1
    assert (status(job_id).status, status(job_id).worker) == ("running", "w1")


def test_a_dead_workers_job_is_requeued_and_claimed_again(job_id: str) -> None:
    with session_scope() as s:
        jobs.claim(s, job_id, "w1", LEASE)
    age_heartbeat(job_id, LEASE + 1)
    with session_scope() as s:
        assert jobs.stale_job_ids(s, LEASE) == [job_id]
        assert jobs.requeue(s, job_id, LEASE)
    assert status(job_id).status == "queued"
    with session_scope() as s:
        again = jobs.claim(s, job_id, "w2", LEASE)
    assert again is not None and again.attempt == 2
    with session_scope() as s:  # the old worker's late progress is refused
        assert not jobs.progress(s, job_id, "w1", 0.5, "x", "late")


def test_exactly_one_delta_per_job(job_id: str) -> None:
    with session_scope() as s:
        claim = jobs.claim(s, job_id, "w1", LEASE)
    with session_scope() as s:
        assert jobs.succeed(s, claim, "w1", make_delta(claim)) is not None
    with session_scope() as s:
        assert jobs.succeed(s, claim, "w1", make_delta(claim)) is None
        assert jobs.claim(s, job_id, "w2", LEASE) is None
        assert s.scalar(select(func.count()).select_from(Delta)) == 1
    job = status(job_id)
    assert (job.status, job.progress) == ("succeeded", 1.0)


def test_cancel_queued_then_running(job_id: str, service_env: Settings) -> None:
    with session_scope() as s:
        assert jobs.claim(s, job_id, "w1", LEASE)
        job = s.get(Job, job_id)
        assert jobs.request_cancel(s, job)
    with session_scope() as s:
        assert not jobs.heartbeat(s, job_id, "w1")  # the worker learns of it on its next beat
        jobs.cancelled(s, job_id, "w1")
    with session_scope() as s:
        assert s.get(Job, job_id).status == JobStatus.cancelled
        assert not jobs.request_cancel(s, s.get(Job, job_id))
        org_id = s.get(Job, job_id).org_id
        queued = jobs.create_job(s, org_id, "toy", None, "all", [])
        assert jobs.request_cancel(s, queued) and queued.status == "cancelled"
        assert jobs.claim(s, queued.id, "w1", LEASE) is None
        stages = [e.stage for e in jobs.events(s, job_id)]
    assert stages[0] == "queued" and stages[-1] == "cancelled"


def test_a_job_that_keeps_losing_its_worker_fails(job_id: str) -> None:
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        with session_scope() as s:
            assert jobs.claim(s, job_id, f"w{attempt}", LEASE) is not None
        age_heartbeat(job_id, LEASE + 1)
        with session_scope() as s:
            assert jobs.requeue(s, job_id, LEASE) == (attempt < jobs.MAX_ATTEMPTS)
    failed = status(job_id)
    assert (failed.status, failed.error_code) == ("failed", "worker_lost")


def age_job(job_id: str, seconds: float, sends: int = 0) -> None:
    with session_scope() as s:
        earlier = utcnow() - timedelta(seconds=seconds)
        s.execute(update(Job).where(Job.id == job_id).values(created_at=earlier, sent_at=earlier if sends else None,
                                                             sends=sends))


def test_a_queued_job_nobody_took_is_sent_again_less_and_less_often(job_id: str) -> None:
    with session_scope() as s:
        assert jobs.unsent_job_ids(s, LEASE) == []  # just made: the API is sending it
    age_job(job_id, LEASE + 1)  # made a lease ago and never sent: the API died before sending it
    with session_scope() as s:
        assert jobs.unsent_job_ids(s, LEASE) == [job_id]
        assert jobs.resend(s, job_id, LEASE)
    with session_scope() as s:  # a second sweeper sends nothing more
        assert jobs.unsent_job_ids(s, LEASE) == [] and not jobs.resend(s, job_id, LEASE)
    age_job(job_id, 3 * LEASE + 1, sends=3)  # sent three times: the next send waits four leases
    with session_scope() as s:
        assert jobs.unsent_job_ids(s, LEASE) == []
    age_job(job_id, 4 * LEASE + 1, sends=3)
    with session_scope() as s:
        assert jobs.unsent_job_ids(s, LEASE) == [job_id]
        assert jobs.claim(s, job_id, "w1", LEASE) is not None
    with session_scope() as s:  # taken by a worker: not the sweeper's business (its lease is)
        assert jobs.unsent_job_ids(s, LEASE) == [] and not jobs.resend(s, job_id, LEASE)
