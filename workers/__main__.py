"""`python -m workers [--train] [celery worker options]`: one upgrade worker with the service's settings, or
with `--train` one training worker (the provider's shadow-run chunks and GT trainings)."""

from __future__ import annotations

import os
import sys

from app.config import get_settings
from workers.celery_app import celery_app


def main(extra: list[str] | None = None) -> None:
    settings = get_settings()
    extra = list(sys.argv[1:] if extra is None else extra)
    train = "--train" in extra
    extra = [arg for arg in extra if arg != "--train"]
    argv = ["worker", "--loglevel", settings.log_level, "--pool", "prefork", "--concurrency", "1",
            "--queues", settings.train_queue if train else settings.upgrade_queue,
            "--hostname", f"gradlift-{'train-' if train else ''}{os.getpid()}@%h",
            "--without-gossip", "--without-mingle"]
    if not settings.broker_is_redis:
        argv.append("--without-heartbeat")  # the server-less transport has no fanout exchange
    celery_app.worker_main(argv + extra)


if __name__ == "__main__":
    main()
