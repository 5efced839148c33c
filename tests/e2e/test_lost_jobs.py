"""A job committed but never delivered to the broker (the API died between its commit and the send, or
the broker lost the message) is sent again by the workers' sweeper, and runs exactly once however many
times its id arrives. Real API, worker and broker, on either backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import queue
from app.db import jobs
from app.db.session import session_scope
from app.db.tables import Delta, Organization
from tests.conftest import use_settings
from tests.e2e.services import Services
from tests.e2e.test_service import backend_env, upload, wait_finished  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow
LEASE_S = 3


def test_a_job_the_broker_never_got_runs_once(backend_env: dict[str, str], toy_adapter: Path,  # noqa: F811
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = backend_env | {"GRADLIFT_JOB_LEASE_S": str(LEASE_S)}
    settings = use_settings(monkeypatch, **{k.removeprefix("GRADLIFT_").lower(): v for k, v in env.items()})
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        client = services.client(services.make_key("acme"))
        checkpoint = upload(client, toy_adapter)
        with session_scope(settings.database_url) as session:  # as the API commits it, then dies: never sent
            org_id = session.scalar(select(Organization.id).where(Organization.name == "acme"))
            job_id = jobs.create_job(session, org_id, "toy", None, "all", [
                {"id": checkpoint["id"], "sha256": checkpoint["sha256"], "privacy": None}]).id
        time.sleep(LEASE_S)
        assert client.get(f"/v1/upgrades/{job_id}").json()["status"] == "queued"

        services.worker()
        job = wait_finished(client, job_id, services, timeout_s=120)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), job
        assert any("sent again" in e["message"] for e in job["events"])

        for _ in range(2):  # late duplicates of its message: the finished job is left alone
            queue.send(queue.UPGRADE_TASK, job_id=job_id)
        time.sleep(2 * LEASE_S)
        assert client.get(f"/v1/upgrades/{job_id}").json()["attempts"] == 1
        with session_scope(settings.database_url) as session:
            assert session.scalar(select(func.count()).select_from(Delta).where(Delta.job_id == job_id)) == 1
