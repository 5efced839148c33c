"""A GT's card: how good it is before anyone relies on it, measured the way its users will feel it.

Whole shadow runs of each task are held out; the recipe trains a GT on the rest, and on the held-out runs it
faces the maps that see the same inputs (the nearest shadow run, ridge, the mean shadow update) and its own
untrained start (what the network gives before any step: the mean update, or the routed start):
- on every held-out snapshot, the cosine of each map's LLM update to the run's true one and R^2 against the
  mean update (above 0 only where a map beats the mean);
- where the task has a test set, the LLM's score (the task's metric) with each map's update for the last
  snapshot of a held-out run, beside the base LLM and the run's own LLM update (the ceiling).
The GT put in service is then trained on every run with the same recipe; the card describes that recipe.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from models.data.evaluate import cosine, r2_vs_mean, task_score
from models.gt.baselines import Ridge, mean_update, nearest
from models.gt.train import GTTrainConfig, train_gt, untrained_gt
from models.lora.update import LoraLayout, add, merge_into
from models.pairs import Pair
from models.pairs.tasks import task_metric, task_splits
from models.training.shadow import ShadowSet

log = logging.getLogger(__name__)

Map = Callable[[torch.Tensor], torch.Tensor]  # TinyLM layer tokens [L_S, D_S] -> LLM layer tokens [L_T, D_T]
Progress = Callable[[float, str], None]
BASELINES = ("nearest", "ridge", "mean_update")


@dataclass(frozen=True)
class CardConfig:
    heldout_share: float = 0.2  # of each task's runs (at least one, where a task has two or more)
    max_test: int = 100  # test examples scored per task
    seed: int = 0


def hold_out(data: ShadowSet, share: float, seed: int) -> tuple[ShadowSet, ShadowSet] | None:
    """(train, held-out) by whole runs, some of every task with two runs or more; None if no task has two."""
    rng, held = random.Random(seed), set()
    for task in sorted(set(data.task)):
        runs = sorted({r for r, t in zip(data.run.tolist(), data.task, strict=True) if t == task})
        if len(runs) > 1:
            held |= set(rng.sample(runs, max(1, round(share * len(runs)))))
    if not held:
        return None
    mask = torch.tensor([r in held for r in data.run.tolist()])
    return data.select(~mask), data.select(mask)


def maps(train: ShadowSet, cfg: GTTrainConfig) -> dict[str, Map]:
    """The trained GT, its untrained start and the baselines, each fitted on `train` alone."""
    gt, _ = train_gt(train, cfg, progress=False)
    start = untrained_gt(train, cfg)
    ridge, mean = Ridge(train), mean_update(train)
    return {"gt": lambda s: gt.generate(s[None])[0], "untrained": lambda s: start.generate(s[None])[0],
            "nearest": lambda s: nearest(train, s), "ridge": ridge.predict, "mean_update": lambda s: mean}


@torch.no_grad()
def heldout_fit(found: dict[str, Map], held: ShadowSet, mean: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per map: mean cosine to the true LLM update and mean R^2 vs the mean update, over held-out snapshots."""
    out = {}
    for name, lift in found.items():
        pred = [lift(s) for s in held.src]
        out[name] = {"cos": sum(cosine(p, t) for p, t in zip(pred, held.tgt, strict=True)) / len(pred),
                     "r2_vs_mean": sum(r2_vs_mean(p, t, mean) for p, t in zip(pred, held.tgt, strict=True)) / len(pred)}
    return out


@contextmanager
def _with_update(model: torch.nn.Module, pair: Pair, tokens: torch.Tensor | None) -> Iterator[torch.nn.Module]:
    """The LLM with an update merged in for the block (None: the base model); its weights restored after."""
    if tokens is None:
        yield model
        return
    init = pair.init("llm")
    params = dict(model.named_parameters())
    names = [n[: n.index(".lora_")].removeprefix("base_model.model.") + ".weight" for n in init]
    saved = {n: params[n].detach().clone() for n in names}
    merge_into(model, add(init, LoraLayout(init, pair.spec.lora.targets).from_tokens(tokens)), pair.spec.lora.scale)
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def scores_on_tests(pair: Pair, found: dict[str, Map], held: ShadowSet, cfg: CardConfig) -> dict[str, dict]:
    """Per task with a test set: its metric and the LLM's score under each map's update for the last snapshot
    of its first held-out run, beside the base LLM and that run's own LLM update."""
    model, tokenizer = pair.load_model("llm"), pair.load_tokenizer("llm")
    out = {}
    for task in sorted(set(held.task)):
        test = task_splits(pair, task).test[:cfg.max_test]
        if not test:
            continue
        rows = [i for i, t in enumerate(held.task) if t == task]
        last = [i for i in rows if held.run[i] == held.run[rows[0]]][-1]
        candidates = {"base": None, "shadow_llm": held.tgt[last],
                      **{name: lift(held.src[last]) for name, lift in found.items()}}
        metric = task_metric(pair, task)
        scores = {}
        for name, tokens in candidates.items():
            with _with_update(model, pair, tokens) as scored:
                scores[name] = task_score(scored, tokenizer, test, metric)
        out[task] = {"metric": metric, "n_test": len(test), "scores": scores}
    return out


def measure_card(pair: Pair, data: ShadowSet, cfg: GTTrainConfig, card: CardConfig = CardConfig(),
                 report: Progress | None = None) -> dict:
    """The card of the GT recipe `cfg` on these shadow runs (see the module's doc)."""
    report = report or (lambda fraction, stage: None)
    split = hold_out(data, card.heldout_share, card.seed)
    if split is None:
        return {"heldout": None, "tests": {}, "summary": {"heldout_runs": 0},
                "note": "no task has two shadow runs: nothing to hold out"}
    train, held = split
    report(0.0, "card: training on the runs not held out")
    found = maps(train, cfg)
    report(0.5, "card: held-out runs")
    fit = heldout_fit(found, held, mean_update(train))
    report(0.6, "card: test sets")
    tests = scores_on_tests(pair, found, held, card)
    return {"heldout": {"runs": len(set(held.run.tolist())), "snapshots": len(held.task), "maps": fit},
            "tests": tests, "summary": summarize(fit, tests, len(set(held.run.tolist())))}


def summarize(fit: dict[str, dict[str, float]], tests: dict[str, dict], runs: int) -> dict:
    """The few numbers `GET /v1/pairs` shows: held-out cosine of the GT, its start and the best baseline;
    mean test score of the GT, its start, the best baseline and the base LLM."""
    best = max(BASELINES, key=lambda name: fit[name]["cos"])
    summary = {"heldout_runs": runs, "cos_gt": fit["gt"]["cos"], "cos_untrained": fit["untrained"]["cos"],
               "best_baseline": best, "cos_best_baseline": fit[best]["cos"]}
    if tests:
        mean = lambda name: sum(t["scores"][name] for t in tests.values()) / len(tests)  # noqa: E731
        best_test = max(BASELINES, key=mean)
        summary |= {"test_gt": mean("gt"), "test_untrained": mean("untrained"), "test_base": mean("base"),
                    "test_best_baseline": mean(best_test), "test_best_baseline_name": best_test,
                    "test_shadow_llm": mean("shadow_llm")}
    return summary
