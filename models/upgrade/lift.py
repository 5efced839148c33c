"""The Gradient Transformer's part of an upgrade: which GT serves an upload, and the LLM update it writes.

    adapters -> update vectors (minus the TinyLM's A0) -> average (several organizations)
             -> layer tokens [L_S, D_S] -> Gradient Transformer -> [L_T, D_T] -> LLM dA, dB
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from models.errors import NotFoundError
from models.gt.checkpoint import load_gt, read_config
from models.gt.network import GradientTransformer
from models.gt.reference import load_reference
from models.lora.privacy import privacy_distance
from models.lora.update import LoraLayout, Update, mean
from models.pairs import ALL_TASKS, Pair

CPU = torch.device("cpu")


def resolve_gt(pair: Pair, task: str | None, privacy: dict | None = None) -> str:
    """The GT to use: the task's own, else the pair's GT for all tasks; of those (named `<task>` or
    `<task>@<anything>`), the one whose shadow runs' privacy (its config's `shadow_privacy`) is nearest
    the upload's (`models.privacy.privacy_distance`; ties: the plainest name first)."""
    ids = pair.gt_ids()
    by_task: dict[str, list[str]] = {}
    for gt_id in ids:
        by_task.setdefault(gt_id.split("@", 1)[0], []).append(gt_id)
    if task is not None and task in by_task:
        candidates = by_task[task]
    elif ALL_TASKS in by_task and (task is None or task in pair.spec.tasks):
        candidates = by_task[ALL_TASKS]
    else:
        wanted = task or "a task-free upgrade"
        have = ", ".join(ids) or "none"
        raise NotFoundError(f"pair {pair.id!r} has no Gradient Transformer for {wanted}; it has: {have}")
    if len(candidates) == 1:
        return candidates[0]
    distance = {gt_id: privacy_distance(privacy, read_config(pair.gt_dir(gt_id)).get("shadow_privacy"))
                for gt_id in candidates}
    return min(candidates, key=lambda gt_id: (distance[gt_id], len(gt_id), gt_id))


def _stamp(path: Path) -> int:
    """Changes when a file is rewritten (checkpoints are replaced by rename, never edited in place)."""
    return path.stat().st_mtime_ns


@lru_cache(maxsize=8)
def _gt(gt_dir: Path, stamp: int, device: torch.device) -> tuple:
    model, meta = load_gt(gt_dir)
    return model.to(device), meta


def lift(pair: Pair, model: GradientTransformer, tiny_updates: list[Update]) -> Update:
    """The LLM update a GT generates for the element-wise average of one or more TinyLM updates (the GT runs
    on its own device; the update comes back on the CPU)."""
    src = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).to_tokens(mean(tiny_updates))  # [L_S, D_S]
    device = next(model.parameters()).device
    tgt = model.generate(src[None].to(device))[0].cpu()  # [L_T, D_T]
    return LoraLayout(pair.init("llm"), pair.spec.lora.targets).from_tokens(tgt)


def generate_update(pair: Pair, gt_id: str, tiny_updates: list[Update],
                    device: torch.device = CPU) -> tuple[Update, str]:
    """The LLM update the pair's GT `gt_id` generates for the TinyLM updates, and the GT's version."""
    gt_dir = pair.gt_dir(gt_id)
    model, meta = _gt(gt_dir, _stamp(gt_dir / "config.json"), device)
    return lift(pair, model, tiny_updates), meta["weights_sha256"][:12]


def similarity(pair: Pair, gt_id: str, tiny_updates: list[Update]) -> dict | None:
    """How the upload compares with the shadow runs the GT learned from (models/gt/reference.py); None for
    a GT saved without its runs' reference."""
    gt_dir = pair.gt_dir(gt_id)
    reference = _reference(gt_dir, _stamp(gt_dir / "config.json"))
    if reference is None:
        return None
    return reference.compare(LoraLayout(pair.init("tiny"), pair.spec.lora.targets).to_tokens(mean(tiny_updates)))


@lru_cache(maxsize=8)
def _reference(gt_dir: Path, stamp: int):  # noqa: ANN202 - Reference | None
    return load_reference(gt_dir)
