"""Each pair's recipe: how its shadow runs, the organization's TinyLM fine-tune and its Gradient
Transformers are made. The TinyLM part is what `gradlift finetune` runs by default (what the pair's GTs
were trained on); the benchmarks and the provider's builds use the rest."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from models.errors import ConfigError
from models.gt.train import GTTrainConfig
from models.pairs import Pair
from models.training.distill import DistillConfig
from models.training.finetune import FinetuneConfig
from models.training.shadow import ShadowPlan


@dataclass(frozen=True)
class Recipe:
    """How a pair's shadow runs, private fine-tunes and Gradient Transformers are made for the benchmark."""

    tiny: FinetuneConfig  # the TinyLM's fine-tune: shadow runs and the organization's private run
    llm: FinetuneConfig  # the LLM's: shadow runs and the private ceiling P_T
    shadow_k: int  # shadow runs per task
    subset_size: int
    keep_last: int  # snapshots kept per run
    unseen: tuple[str, tuple[int, ...], tuple[int, ...]] | None  # setting C: family, shadow keys, held-out keys
    gt: GTTrainConfig = field(default_factory=GTTrainConfig)
    batch_runs: int = 8  # shadow runs trained in one loop (one chunk of a build): bounded by memory

    def plan(self, task: str) -> ShadowPlan:
        llm = None if self.llm == self.tiny else self.llm
        return ShadowPlan(task, subsets=self.shadow_k, subset_size=self.subset_size, keep_last=self.keep_last,
                          finetune=self.tiny, llm_finetune=llm)


# Gradient Transformer recipes by name, for the benchmarks' side-by-side tables (bench.quality --gt NAME).
GT_RECIPES = {
    "paper": GTTrainConfig(),  # the paper's network: starts from the mean update, the head learns the rest
    "routed": GTTrainConfig(route=True),  # starts from the shadow runs nearest the input, softmax(30 cos)
    "routed-lt": GTTrainConfig(route=True, temperature_lr=0.05),  # ... and learns its temperature quickly
    "task-routed": GTTrainConfig(route=True, route_by="task"),  # starts from the nearest tasks' mean updates
    "task-routed-lt": GTTrainConfig(route=True, route_by="task", temperature_lr=0.05),
}


def gt_recipe(recipe: Recipe, name: str | None) -> GTTrainConfig:
    """The pair's own GT recipe (None), or a named one (GT_RECIPES)."""
    if name is None:
        return recipe.gt
    if name not in GT_RECIPES:
        raise ConfigError(f"unknown GT recipe {name!r}; known: {', '.join(GT_RECIPES)}")
    return GT_RECIPES[name]


RECIPES = {
    # 150 steps of batch 16 from subsets of 1000 public examples, both models; 32 shadow runs per task.
    "toy": Recipe(tiny=FinetuneConfig(steps=150, batch_size=16, lr=3e-3),
                  llm=FinetuneConfig(steps=150, batch_size=16, lr=3e-3),
                  shadow_k=32, subset_size=1000, keep_last=10, unseen=("rotate", (1, 3, 4, 6, 7), (2, 5)),
                  batch_runs=16),
    # SmolLM2 learns these tasks in 40 steps of batch 8; so does the TinyLM, partly (measured). Setting C
    # asks the GT for pick keys 1 and 3 having seen only 2 and 4. The pair-wide GTs start from the tasks'
    # mean updates nearest the input (`route_by="task"`, see models/gt/network.py): without routing the B GT
    # scored 0% on pick-2 and pick-4 (bench/results/smol-unrouted.json), routed by run it mixed tasks.
    "smol": Recipe(tiny=FinetuneConfig(steps=40, batch_size=8, lr=2e-3),
                   llm=FinetuneConfig(steps=40, batch_size=8, lr=2e-3),
                   shadow_k=8, subset_size=320, keep_last=10, unseen=("pick", (2, 4), (1, 3)),
                   gt=GT_RECIPES["task-routed"], batch_runs=4),
}

# A pair added from model folders: the fine-tune and GT defaults, 8 shadow runs of 1,000 examples per task.
DEFAULT_RECIPE = Recipe(tiny=FinetuneConfig(), llm=FinetuneConfig(), shadow_k=8, subset_size=1000, keep_last=10,
                        unseen=None, batch_runs=4)
# What a provider may change of a recipe when it builds shadow runs (steps, batch size and rate: both models).
PLAN_OVERRIDES = ("subset_size", "keep_last", "steps", "batch_size", "lr", "seed")


def tiny_recipe(pair_id: str) -> FinetuneConfig:
    """The TinyLM fine-tune a pair's GTs were trained on: what an organization should run (defaults else)."""
    return RECIPES[pair_id].tiny if pair_id in RECIPES else FinetuneConfig()


def provider_recipe(pair_id: str) -> Recipe:
    """The recipe the service's shadow builds and GT trainings start from: the pair's own, else the defaults."""
    return RECIPES.get(pair_id, DEFAULT_RECIPE)


def provider_plan(pair_id: str, task: str, runs: int, pool_size: int, overrides: dict[str, Any]) -> ShadowPlan:
    """A shadow build's plan: the recipe's, with `overrides`; subsets of at most half the task's public pool
    by default (so runs differ in their data, not only in its order)."""
    unknown = sorted(set(overrides) - set(PLAN_OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown plan settings {unknown}; known: {', '.join(PLAN_OVERRIDES)}")
    recipe = provider_recipe(pair_id)
    tunes = {k: overrides[k] for k in ("steps", "batch_size", "lr") if overrides.get(k) is not None}
    plan = replace(recipe.plan(task), subsets=runs, subset_size=min(recipe.subset_size, max(1, pool_size // 2)),
                   finetune=replace(recipe.tiny, **tunes),
                   llm_finetune=None if recipe.llm == recipe.tiny else replace(recipe.llm, **tunes))
    plan = replace(plan, **{k: overrides[k] for k in ("subset_size", "keep_last", "seed")
                            if overrides.get(k) is not None})
    if plan.subset_size > pool_size or plan.subset_size < 1:
        raise ConfigError(f"subset_size {plan.subset_size}: the task's public pool has {pool_size} examples")
    if plan.keep_last > min(plan.side_finetune("tiny").steps, plan.side_finetune("llm").steps):
        raise ConfigError(f"keep_last {plan.keep_last} is more than the fine-tune's steps")
    return plan


def recipe_for(pair: Pair) -> Recipe:
    if pair.id not in RECIPES:
        raise KeyError(f"no benchmark recipe for pair {pair.id!r}; known: {', '.join(RECIPES)}")
    return RECIPES[pair.id]


@dataclass(frozen=True)
class QualityConfig:
    """How an upgrade is judged (models/upgrade/quality.py). Probe prompts: answered by the organization's
    TinyLM, the base LLM and the upgraded LLM; `gain` is the upgraded LLM's agreement with the TinyLM minus
    the base LLM's. Thresholds calibrated by `python -m bench.modes` (held-out keys and shadow runs)."""

    probes: int = 128  # prompts probed (an organization's own first, else the task's or the pair's public ones)
    no_gain_below: float = 0.02  # gain under this: the update does not move the LLM towards the TinyLM
    ok_from: float = 0.05  # a distilled update (or a GT's without a reference) is ok from this gain
    relative_from: float = 0.5  # a GT's update is ok when the upload is at least this close to a shadow run
    harm_below: float = -0.05  # ... unless the upgraded LLM agrees with the TinyLM less than the base LLM by this
    gt_gain_from: float | None = None  # ... and, where set, agrees with it more than the base LLM by this much on
    # probes of the task's format (the organization's or the task's prompts; not on the pair's mixed ones)


@dataclass(frozen=True)
class UpgradeRecipe:
    distill: DistillConfig
    quality: QualityConfig = field(default_factory=QualityConfig)
    distill_from_gt: bool = True  # `auto` also distils from the GT's undelivered update (and picks by agreement)
    soup: bool = False  # where an upgrade made several distillations, their element-wise mean is a candidate too


UPGRADES = {
    # relative_from 0.8 on toy: with each key of rotate, drop and separate held out of its family's shadow runs
    # in turn, 0.8 flags 21 of the 24 held-out uploads and 2 of the 24 known ones (0.5: 12 and 1; AUROC 0.93:
    # python -m bench.unseen --pair toy --similarity-only). smol keeps 0.5: no threshold flags its unseen pick-1.
    # Distillations deliver their update averaged over the last steps of the run (LoRA factors, one run): on
    # toy's 24 held-out keys x 2 draws, from the init, the last 120 of 150 steps gave accuracy +0.083 over the last
    # step's (se 0.019; 19.5% -> 32.2% average PGR; better on 39 of 48, worse on 7), the last 75 +0.048, the last 15
    # +0.013 (bench/results/distill-toy-average.json); a 90-step run alone, where that average is centred, did not
    # (0.457 against 0.463 for 150 steps and 0.501 averaged, 20 key-draws: the averaging, not stopping earlier).
    "toy": UpgradeRecipe(DistillConfig(RECIPES["toy"].llm, average_tail=0.8),
                         QualityConfig(probes=256, relative_from=0.8)),
    # gt_gain_from 0.15 on smol: with the organization's prompts the GT's updates of the 4 known tasks agreed with
    # their TinyLMs by 0.33-0.72 over the base LLM, those of unseen pick-1 and pick-3 (relative 0.97 and 0.72,
    # not flagged by similarity) by 0.05 and 0.06 (bench/results/modes-smol-B.json, modes-smol-C.json); over 3 draws
    # 0.25-0.72 against 0.03-0.11 (bench/results/modes-smol-gt-B.json, modes-smol-gt-C.json).
    # smol distils for 120 steps of batch 8, about one pass over the ~940 prompts the TinyLM labels, where the
    # private fine-tune's 40 steps saw a third of them: on pick6's held-out keys with the organization's prompts,
    # from the init, 44.2% average PGR against 28.6% (accuracy 0.58 against 0.54), better on 3 of 6 keys; on a second
    # draw 38.2% against 17.8%, better on 5 of 6 (bench/results/distill-smol.json, distill-smol-long.json).
    # Distilled from the GT's update it moves the average a little: 50.7% against 48.1% over two draws of the six keys,
    # 57.4% against 48.5% between seen keys, 37.3% against 47.3% outside them (bench/results/unseen-smol-own-120.json).
    # `auto` on the second draw, choosing between both by agreement: 54.1% (50.2% at 40 steps), the better of the
    # two on 4 of 6 keys (bench/results/modes-smol-L-120.json). `soup` stays off: the mean of the two distillations
    # averaged 49.8% PGR against 53.1% and 56.1% for its members (0.22 of accuracy on pick6-3 where both reached
    # 0.53), and delivered by agreement it moved `auto` from 57.7% to 58.2%, on one key
    # (bench/results/modes-smol-L-soup.json). Averaged over its last 60 of 120 steps a distillation from the init
    # reached 61.8% average PGR on pick6's six held-out keys x 2 draws against 40.6% for the last step's update
    # (accuracy +0.136, se 0.027, better on 12 of 12; the last 30: 58.9%; bench/results/distill-smol-average.json).
    # The results above were measured before, at the last step.
    "smol": UpgradeRecipe(DistillConfig(replace(RECIPES["smol"].llm, steps=120), average_tail=0.5),
                          QualityConfig(probes=64, gt_gain_from=0.15)),
}


def upgrade_recipe(pair_id: str) -> UpgradeRecipe:
    """How upgrades on a pair distill and are judged (defaults for pairs without a recipe of their own)."""
    return UPGRADES.get(pair_id, UpgradeRecipe(DistillConfig(FinetuneConfig())))
