"""A worker's hold on the row it runs (an upgrade job, a shadow chunk, a GT training): a thread renews the
row's lease every `interval_s` and notes when the row is no longer this worker's to run (cancelled, or taken
over after a lease ran out); the work checks `stopped` between its steps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.db.session import session_scope

log = logging.getLogger(__name__)


class Lease:
    """Keeps a row's lease from a thread (`beat` returns False once it is no longer ours to run)."""

    def __init__(self, beat: Callable[[], bool], interval_s: float, name: str) -> None:
        self.beat, self.interval_s = beat, interval_s
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                if not self.beat():
                    self.stopped.set()
            except Exception:
                log.exception("lease heartbeat failed")


def beat(fn: Callable[..., bool], *args: object) -> Callable[[], bool]:
    """A lease's beat: `fn(session, *args)` in a session of its own (True while the row is still ours)."""
    def renew() -> bool:
        with session_scope() as session:
            return fn(session, *args)
    return renew
