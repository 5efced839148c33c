"""The workers' Celery app, configured like the API's producer (`app.queue.celery_config`).

Run with `python -m workers` (or `gradlift worker`): prefork, concurrency 1, prefetch 1, acks late. The
main process also runs the sweeper, which sends again the jobs of workers that died mid-job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.config import get_settings
from app.db.session import dispose_engines
from app.queue import celery_config

log = logging.getLogger(__name__)

celery_app = Celery("gradlift", include=["workers.tasks"])
celery_app.config_from_object(celery_config(get_settings()))

_sweeper_stop = threading.Event()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections inherited from the parent must not be shared; models load later, on first use.
    dispose_engines()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    from workers import training
    from workers.upgrade import sweep

    interval = get_settings().job_lease_s / 2

    def loop() -> None:
        while True:
            try:
                sweep()
                training.sweep()
            except Exception:
                log.exception("sweep failed; trying again in %.0fs", interval)
            if _sweeper_stop.wait(interval):
                return

    threading.Thread(target=loop, name="gradlift-sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeper_stop.set()
