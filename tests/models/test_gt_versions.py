"""GT versions: a training stores a version with its card; only activation puts it in service; the GT folders
from before versions (the shipped ones) keep working."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import NotFoundError
from models.gt.card import CardConfig, hold_out
from models.gt.network import GTArch
from models.gt.publish import train_version
from models.gt.train import GTTrainConfig
from models.gt.versions import activate, active_version, list_versions
from models.lora.update import read_adapter, subtract
from models.pairs import ALL_TASKS, Pair, PairStore
from models.training.finetune import FinetuneConfig
from models.training.shadow import ShadowPlan, build_shadow, load_shadow
from models.upgrade import generate_update, resolve_gt

TASKS = ("rotate-6", "drop-5")
GT_CFG = GTTrainConfig(steps=40, eval_every=20, arch=GTArch(d_model=32, d_ff=64))


def plans() -> list[ShadowPlan]:
    return [ShadowPlan(task, subsets=3, subset_size=64, keep_last=3, finetune=FinetuneConfig(steps=12, batch_size=8))
            for task in TASKS]


def test_a_trained_version_waits_for_activation(toy_copy_dir: Path, toy_adapter: Path):
    pair = PairStore(toy_copy_dir).get("toy")
    build_shadow(pair, plans(), progress=False, chunk=3)
    version, card = train_version(pair, "rotate-6", plans()[:1], GT_CFG, CardConfig(max_test=8))
    assert pair.gt_ids() == [ALL_TASKS] and resolve_gt(pair, "rotate-6") == ALL_TASKS  # not in service yet
    assert card["heldout"]["runs"] == 1 and set(card["heldout"]["maps"]) == {
        "gt", "untrained", "nearest", "ridge", "mean_update"}
    scores = card["tests"]["rotate-6"]["scores"]
    assert set(scores) == {"base", "shadow_llm", "gt", "untrained", "nearest", "ridge", "mean_update"}
    assert all(0 <= s <= 1 for s in scores.values()) and card["tests"]["rotate-6"]["n_test"] == 8
    assert card["summary"]["heldout_runs"] == 1 and "test_gt" in card["summary"]

    activate(pair, "rotate-6", version)
    assert resolve_gt(pair, "rotate-6") == "rotate-6" and active_version(pair, "rotate-6") == version
    update = subtract(read_adapter(toy_adapter / "adapter_model.safetensors"), pair.init("tiny"))
    assert generate_update(pair, "rotate-6", [update])[1] == version  # what the delta records

    other, _ = train_version(pair, "rotate-6", plans()[:1], GTTrainConfig(steps=50, eval_every=25,
                                                                          arch=GTArch(d_model=32, d_ff=64)))
    assert other != version and active_version(pair, "rotate-6") == version
    activate(pair, "rotate-6", other)
    rows = list_versions(pair, "rotate-6")
    assert {r["version"]: r["active"] for r in rows} == {version: False, other: True}
    assert generate_update(pair, "rotate-6", [update])[1] == other  # the worker's cache follows the swap
    with pytest.raises(NotFoundError):
        activate(pair, "rotate-6", "0123456789ab")
    with pytest.raises(NotFoundError):
        activate(pair, "../toy", version)


def test_the_card_holds_out_whole_runs_of_every_task(toy_copy_dir: Path):
    pair = PairStore(toy_copy_dir).get("toy")
    build_shadow(pair, plans(), progress=False, chunk=3)
    data = load_shadow(pair, plans())
    train, held = hold_out(data, 0.2, seed=0)
    assert set(held.task) == set(TASKS) and not set(train.run.tolist()) & set(held.run.tolist())
    assert len(set(held.run.tolist())) == 2 and len(held.task) == 2 * 3  # one run each, all its snapshots
    single = load_shadow(pair, [ShadowPlan(TASKS[0], subsets=1, subset_size=64, keep_last=3,
                                           finetune=FinetuneConfig(steps=12, batch_size=8))])
    assert hold_out(single, 0.2, seed=0) is None


def test_gt_folders_from_before_versions_have_a_version(smol_assets: Pair):
    for gt_id in smol_assets.gt_ids():
        rows = list_versions(smol_assets, gt_id)
        assert len(rows) == 1 and rows[0]["active"] and len(rows[0]["version"]) == 12


@pytest.fixture
def smol_assets() -> Pair:
    """The shipped smol files (pair.json, inits, GTs) read in place; nothing is written."""
    return Pair(Path(__file__).resolve().parents[2] / "models" / "assets" / "smol")
