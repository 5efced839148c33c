"""Celery tasks: thin shells that take ids and call plain functions."""

from __future__ import annotations

import os
import socket

from app.queue import GT_TRAIN_TASK, SHADOW_CHUNK_TASK, UPGRADE_TASK
from workers.celery_app import celery_app
from workers.training import run_chunk, run_gt_training
from workers.upgrade import run_job


@celery_app.task(name=UPGRADE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def upgrade(*, job_id: str) -> None:
    """Run upgrade job `job_id`; safe to run twice (a finished or held job is left alone)."""
    run_job(job_id, worker=f"{socket.gethostname()}:{os.getpid()}")


@celery_app.task(name=SHADOW_CHUNK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def shadow_chunk(*, chunk_id: int) -> None:
    """Train chunk `chunk_id` of a shadow build; safe to run twice (written runs are kept, not redone)."""
    run_chunk(int(chunk_id), worker=f"{socket.gethostname()}:{os.getpid()}")


@celery_app.task(name=GT_TRAIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def gt_train(*, training_id: str) -> None:
    """Train GT training `training_id`'s network and card; safe to run twice."""
    run_gt_training(training_id, worker=f"{socket.gethostname()}:{os.getpid()}")
