"""An upgrade: `run_upgrade` (models/upgrade/run.py) is the one function that is an upgrade; the GT's part
(which GT, the update it writes, how the upload compares with its shadow runs) is lift.py; the checks a delta
passes before delivery are checks.py; the quality report and verdict are quality.py."""

from models.upgrade.lift import generate_update, lift, resolve_gt, similarity
from models.upgrade.run import MODES, UpgradeResult, run_upgrade

__all__ = ["MODES", "UpgradeResult", "generate_update", "lift", "resolve_gt", "run_upgrade", "similarity"]
