"""The API's side of the task queue: Celery configuration and sending tasks by name.

The API never imports `workers/` (that would drag the ML stack into the web process): it sends task
names with ids as keyword arguments, and the workers build their Celery app from the same config.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

UPGRADE_TASK = "gradlift.upgrade"
SHADOW_CHUNK_TASK = "gradlift.shadow_chunk"  # the provider's: on the train queue
GT_TRAIN_TASK = "gradlift.gt_train"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings shared by the producer (API) and the workers."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # the database holds job state, not a result backend
        "task_routes": {UPGRADE_TASK: {"queue": settings.upgrade_queue},
                        SHADOW_CHUNK_TASK: {"queue": settings.train_queue},
                        GT_TRAIN_TASK: {"queue": settings.train_queue}},
        "task_default_queue": settings.upgrade_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit_s,
        "task_soft_time_limit": max(1, settings.job_time_limit_s - 30),
        "worker_hijack_root_logger": False,
    }
    if settings.broker_is_redis:
        # Above the longest job, or Redis hands a running task to a second worker.
        config["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout_s}
        config["worker_send_task_events"] = True  # for Flower
    else:
        # kombu's SQLAlchemy transport passes its options to create_engine and has no fanout
        # exchange, so no remote control; a longer SQLite lock wait suits two processes on one file.
        if settings.broker_url.startswith("sqla+sqlite"):
            config["broker_transport_options"] = {"connect_args": {"timeout": 30}}
        config["worker_enable_remote_control"] = False
    return config


@lru_cache(maxsize=4)
def _producer(broker_url: str) -> Celery:
    if broker_url.startswith("sqla+sqlite:///"):
        Path(broker_url.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    app = Celery("gradlift-api", set_as_current=False)
    app.config_from_object(celery_config(get_settings()))
    return app


def send(task_name: str, **ids: str) -> None:
    """Queue a task by name; ids only, as keyword arguments. Call after the database commit."""
    settings = get_settings()
    _producer(settings.broker_url).send_task(task_name, kwargs=ids, retry=True,
                                             retry_policy={"max_retries": 3, "interval_start": 0.2})


def ping(timeout_s: float = 2.0) -> None:
    """Raise if the broker cannot be reached."""
    settings = get_settings()
    with _producer(settings.broker_url).connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout_s)
