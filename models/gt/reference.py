"""What a Gradient Transformer was trained on, kept beside it so an upload can be compared with it.

One point per shadow run (the mean of its TinyLM snapshots, scaled per coordinate by the GT's own statistics
and flattened) and the run's task; and, for each run, its cosine to the nearest *other* run (leave one run
out). A GT of several tasks centres the points on their mean, so what tells tasks apart dominates; a GT of
one task does not (its mean is the task's direction: centred, its runs are noise around zero). Those
held-out similarities calibrate "looks like the training data": `relative` is an upload's cosine to its
nearest run over the median held-out one. Shadow runs of a task share part of their data
(subsets of one public pool), so they are closer to each other than an organization's run on its own data
is to any of them: measured on the toy pair, uploads of tasks the GT knows came out at 0.72-0.79 (margins to
the next task 0.34-0.39), a key it never saw at 0.21 (margin 0.06).

    <gt_dir>/reference.safetensors   {"points": [R, L_S*D_S], "loo": [R], "mean", "std": [L_S, D_S]},
                                     metadata {"tasks": [...]}
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
    points: torch.Tensor  # [R, F] run means, centred (several tasks) and scaled
    tasks: list[str]  # [R]
    loo: torch.Tensor  # [R] each run's cosine to its nearest other run
    mean: torch.Tensor  # [L_S, D_S] subtracted from an upload (zeros for a GT of one task)
    std: torch.Tensor  # [L_S, D_S] dividing it

    def place(self, src: torch.Tensor) -> torch.Tensor:
        """Where TinyLM updates [..., L_S, D_S] fall among the points: [..., F]."""
        return ((src - self.mean) / self.std).flatten(-2)

    def compare(self, src: torch.Tensor) -> dict:
        """How an upload's layer tokens [L_S, D_S] relate to the runs: the task of the nearest run, its
        cosine, the margin to the best run of another task (None with one task), and `relative`: that
        cosine over the median cosine of a held-out run to its nearest other run."""
        sims = F.cosine_similarity(self.points.double(), self.place(src).double()[None], dim=1)
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
    """One point per run of `data`, scaled by the model's statistics (and centred by them for several tasks)."""
    runs = sorted(set(data.run.tolist()))
    tasks = [data.task[int((data.run == r).nonzero()[0])] for r in runs]
    mean = model.src_mean.clone() if len(set(tasks)) > 1 else torch.zeros_like(model.src_mean)
    reference = Reference(torch.empty(0), tasks, torch.empty(0), mean, model.src_std.clone())
    flat = reference.place(data.src)  # [N, F]
    points = torch.stack([flat[data.run == r].mean(0) for r in runs])
    if len(runs) > 1:
        sims = F.cosine_similarity(points[:, None].double(), points[None].double(), dim=2)
        sims.fill_diagonal_(-1.0)
        loo = sims.max(1).values.float()
    else:
        loo = torch.ones(1)
    reference.points, reference.loo = points.float().contiguous(), loo.contiguous()
    return reference


def save_reference(reference: Reference, gt_dir: Path) -> None:
    tensors = {"points": reference.points, "loo": reference.loo, "mean": reference.mean.contiguous(),
               "std": reference.std.contiguous()}
    save_file(tensors, str(Path(gt_dir) / FILE),
              metadata={"tasks": json.dumps(reference.tasks)})


def load_reference(gt_dir: Path) -> Reference | None:
    """The GT's reference, or None for a checkpoint saved without one."""
    path = Path(gt_dir) / FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        tasks = json.loads(f.metadata()["tasks"])
        if "mean" not in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict; an early reference, without the scaling it was made with: rebuild it
            return None
        return Reference(f.get_tensor("points"), tasks, f.get_tensor("loo"), f.get_tensor("mean"),
                         f.get_tensor("std"))
