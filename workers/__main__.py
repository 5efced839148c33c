"""`python -m workers [celery worker options]`: one upgrade worker with the service's settings."""

from __future__ import annotations

import os
import sys

from app.config import get_settings
from workers.celery_app import celery_app


def main(extra: list[str] | None = None) -> None:
    settings = get_settings()
    argv = ["worker", "--loglevel", settings.log_level, "--pool", "prefork", "--concurrency", "1",
            "--queues", settings.upgrade_queue, "--hostname", f"gradlift-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle"]
    if not settings.broker_is_redis:
        argv.append("--without-heartbeat")  # the server-less transport has no fanout exchange
    celery_app.worker_main(argv + (sys.argv[1:] if extra is None else extra))


if __name__ == "__main__":
    main()
