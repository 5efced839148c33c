"""A GT trained by the service: its card measured, then the network trained on every run and stored as a new
version (in service only once activated, `models.gt.versions.activate`)."""

from __future__ import annotations

from collections.abc import Callable

from models.gt.card import CardConfig, measure_card
from models.gt.checkpoint import data_hash
from models.gt.train import GTTrainConfig, train_gt
from models.gt.versions import save_version
from models.pairs import Pair
from models.training.shadow import ShadowPlan, load_shadow, shadow_privacy

Progress = Callable[[float, str], None]


def train_version(pair: Pair, gt_id: str, plans: list[ShadowPlan], cfg: GTTrainConfig,
                  card_cfg: CardConfig | None = None, report: Progress | None = None,
                  meta: dict | None = None) -> tuple[str, dict]:
    """Train GT `gt_id` on the plans' shadow runs; store it as a version with its card. (version, card)"""
    report = report or (lambda fraction, stage: None)
    report(0.0, "loading shadow runs")
    data = load_shadow(pair, plans)
    card = measure_card(pair, data, cfg, card_cfg or CardConfig(), lambda f, stage: report(0.05 + 0.65 * f, stage))
    report(0.75, "training on every run")
    model, info = train_gt(data, cfg, progress=False)
    report(0.95, "storing the version")
    version = save_version(model, pair, gt_id, {
        **(meta or {}), "pair": pair.id, "task": gt_id, "tasks": sorted({p.task for p in plans}),
        "data_sha256": data_hash(data.src, data.tgt), "shadow_privacy": shadow_privacy(plans),
        "shadow_plans": [p.key() for p in plans], "card": card, **info}, data)
    return version, card
