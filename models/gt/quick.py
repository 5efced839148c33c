"""The toy pair with a quickly trained Gradient Transformer for all its tasks: what tests and
`gradlift pair build toy` use (the benchmark's GTs come from `python -m bench.quality`)."""

from __future__ import annotations

from pathlib import Path

from models.gt.checkpoint import data_hash, save_gt
from models.gt.network import GTArch
from models.gt.train import GTTrainConfig, train_gt
from models.pairs import ALL_TASKS, Pair, ensure_pair, locked
from models.training.finetune import FinetuneConfig
from models.training.shadow import ShadowPlan, build_shadow, load_shadow, shadow_privacy


def quick_plans(pair: Pair) -> list:
    """The shadow plans of the quick test GT: 2 short fine-tunes per task."""
    return [ShadowPlan(task, subsets=2, subset_size=200, keep_last=4, finetune=FinetuneConfig(steps=30))
            for task in pair.spec.tasks]


def ensure_toy_ready(root: Path, profile: str = "test") -> Pair:
    """The toy pair with a Gradient Transformer for all its tasks; a small, fast one for `test`."""
    pair = ensure_pair(Path(root), "toy")
    if ALL_TASKS in pair.gt_ids():
        return pair
    if profile != "test":
        raise ValueError(f"unknown profile {profile!r}; the full GTs come from `python -m bench.quality`")
    with locked(Path(root) / ".toy-gt.lock"):
        if ALL_TASKS not in pair.gt_ids():
            plans = quick_plans(pair)
            build_shadow(pair, plans, progress=False)
            data = load_shadow(pair, plans)
            model, info = train_gt(data, GTTrainConfig(steps=150, eval_every=50, arch=GTArch(d_model=64, d_ff=128)),
                                   progress=False)
            save_gt(model, pair.gt_dir(ALL_TASKS), {"pair": pair.id, "task": ALL_TASKS,
                                                    "tasks": list(pair.spec.tasks), "profile": profile,
                                                    "data_sha256": data_hash(data.src, data.tgt),
                                                    "shadow_privacy": shadow_privacy(plans), **info}, data)
    return pair
