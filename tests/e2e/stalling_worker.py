"""A real worker whose upgrades stall once started, so a test can SIGKILL it in the middle of a job.

Run as `python -m tests.e2e.stalling_worker`. Only the ML call is replaced; the claim, heartbeats, the
database and the broker are the real ones.
"""

import time

import models.upgrade
from workers.__main__ import main

STAGE = "stalled for a crash test"


def _stall(pair, gt_id, adapter_paths, out_dir, on_progress=None, device=None, **options):  # noqa: ANN001, ANN202, ANN003 - run_upgrade's
    # Reports progress as a long GT run would, so a cancel is noticed; never finishes.
    for _ in range(3000):
        on_progress(0.0, STAGE)
        time.sleep(0.2)


if __name__ == "__main__":  # only in the worker process: importing this module (for STAGE) changes nothing
    models.upgrade.run_upgrade = _stall
    main([])
