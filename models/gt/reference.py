"""What a Gradient Transformer was trained on, kept beside it so an upload can be compared with it.

One point per shadow run (the mean of its TinyLM snapshots, standardised with the GT's own statistics and
flattened) and the run's task; and, for each run, its cosine to the nearest *other* run (leave one run
out). Those held-out similarities calibrate "looks like the training data": `relative` is an upload's
cosine to its nearest run over the median held-out one. Shadow runs of a task share part of their data
(subsets of one public pool), so they are closer to each other than an organization's run on its own data
is to any of them: measured on the toy pair, uploads of tasks the GT knows came out at 0.72-0.79 (margins to
the next task 0.34-0.39), a key it never saw at 0.21 (margin 0.06).

    <gt_dir>/reference.safetensors   {"points": [R, L_S*D_S], "loo": [R]}, metadata {"tasks": [...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from models.gt.network import GradientTransformer
from models.training.shadow import ShadowSet

FILE = "reference.safetensors"


@dataclass
class Reference:
    points: torch.Tensor  # [R, F] standardised run means
    tasks: list[str]  # [R]
    loo: torch.Tensor  # [R] each run's cosine to its nearest other run

    def compare(self, point: torch.Tensor) -> dict:
        """How a standardised, flattened upload [F] relates to the runs: the task of the nearest run, its
        cosine, the margin to the best run of another task (None with one task), and `relative`: that
        cosine over the median cosine of a held-out run to its nearest other run."""
        sims = F.cosine_similarity(self.points.double(), point.double()[None], dim=1)
        best: dict[str, float] = {}
        for task, sim in zip(self.tasks, sims.tolist(), strict=True):
            best[task] = max(best.get(task, -1.0), sim)
        ranked = sorted(best.items(), key=lambda item: -item[1])
        nearest_task, nearest = ranked[0]
        return {"nearest_task": nearest_task, "nearest_cos": round(nearest, 4),
                "margin": round(nearest - ranked[1][1], 4) if len(ranked) > 1 else None,
                "runner_up_task": ranked[1][0] if len(ranked) > 1 else None,
                "relative": round(nearest / max(float(self.loo.median()), 1e-6), 4), "runs": len(self.tasks)}


@torch.no_grad()
def build_reference(model: GradientTransformer, data: ShadowSet) -> Reference:
    """One point per run of `data`, standardised by the model's statistics."""
    flat = model.standardise_source(data.src).flatten(1)  # [N, F]
    runs = sorted(set(data.run.tolist()))
    points = torch.stack([flat[data.run == r].mean(0) for r in runs])
    tasks = [data.task[int((data.run == r).nonzero()[0])] for r in runs]
    if len(runs) > 1:
        sims = F.cosine_similarity(points[:, None].double(), points[None].double(), dim=2)
        sims.fill_diagonal_(-1.0)
        loo = sims.max(1).values.float()
    else:
        loo = torch.ones(1)
    return Reference(points.float().contiguous(), tasks, loo.contiguous())


def save_reference(reference: Reference, gt_dir: Path) -> None:
    save_file({"points": reference.points, "loo": reference.loo}, str(Path(gt_dir) / FILE),
              metadata={"tasks": json.dumps(reference.tasks)})


def load_reference(gt_dir: Path) -> Reference | None:
    """The GT's reference, or None for a checkpoint saved without one."""
    path = Path(gt_dir) / FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        tasks = json.loads(f.metadata()["tasks"])
        return Reference(f.get_tensor("points"), tasks, f.get_tensor("loo"))
