"""Celery tasks: thin shells that take ids and call plain functions."""

from __future__ import annotations

import os
import socket

from app.queue import UPGRADE_TASK
from workers.celery_app import celery_app
from workers.upgrade import run_job


@celery_app.task(name=UPGRADE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def upgrade(*, job_id: str) -> None:
    """Run upgrade job `job_id`; safe to run twice (a finished or held job is left alone)."""
    run_job(job_id, worker=f"{socket.gethostname()}:{os.getpid()}")
