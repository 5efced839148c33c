"""Pooled upgrades: five organizations share one task, each holding a fifth of its private data.

    python -m bench.pooled --pair toy --out bench/results/pooled-toy.json

For every task of the pair, organization i fine-tunes the TinyLM on its fifth of the task's private data
and is scored on its own test set (a fifth of a test split five times the usual size, disjoint from every
training split and from the other organizations' tests). Per organization: the LLM without update, its
TinyLM alone, its own upgrade (the GT on its update), the pooled upgrade (the GT on the element-wise
average of all five updates, as the service pools them) and the LLM fine-tuned on all five fifths (the
ceiling). The GT is the pair-wide one (the task not given), trained as `bench.quality` trains it.

The private data is the task's whole private split (3,000 examples: 600 per organization), then its first
600 and first 120 examples (120 and 24 per organization): on the toy pair a fifth of the full split
already takes every upgrade to the ceiling, so only scarcer data can show what pooling adds.
Prints a table per size, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.experiment import Scorer, finetune_side
from bench.quality import fit
from models.data.evaluate import accuracy, cosine, pgr
from models.data.tasks import Example, get_task, make_splits
from models.gt.network import GradientTransformer
from models.pairs import ALL_TASKS, Pair, ensure_pair
from models.recipes import Recipe, recipe_for
from models.training.shadow import build_shadow
from models.upgrade import lift

log = logging.getLogger("bench.pooled")

ORGS = 5
TEST_PER_ORG = 500


def org_data(pair: Pair, task: str, per_org: int
             ) -> tuple[list[Example], list[tuple[list[Example], list[Example]]]]:
    """The private data (the first ORGS x per_org private examples), and per organization (its fifth of
    it, its own test set). A longer test split leaves the public and private splits as they are (inputs
    are drawn in order), so the shadow data never meets these."""
    splits = make_splits(get_task(task), n_test=ORGS * TEST_PER_ORG, seed=pair.spec.seed)
    private = splits.private[:ORGS * per_org]
    if len(private) < ORGS * per_org:
        raise ValueError(f"{task} has {len(splits.private)} private examples, fewer than {ORGS} x {per_org}")
    return private, [(private[i * per_org:(i + 1) * per_org],
                      splits.test[i * TEST_PER_ORG:(i + 1) * TEST_PER_ORG]) for i in range(ORGS)]


def pooled_task(pair: Pair, recipe: Recipe, scorer: Scorer, gt: GradientTransformer, task: str, per_org: int,
                timings: dict) -> dict:
    """One task: five organizations' own upgrades beside their pooled upgrade and the ceiling."""
    private, orgs = org_data(pair, task, per_org)
    tiny_tokenizer = pair.load_tokenizer("tiny")
    updates, p_s = [], []
    for index, (fifth, test) in enumerate(orgs):
        update, model, seconds = finetune_side(pair, "tiny", fifth, replace(recipe.tiny, seed=index))
        timings.setdefault("tiny_finetune_fifth", []).append(seconds)
        updates.append(update)
        p_s.append(accuracy(model, tiny_tokenizer, test))
    ceiling_update, ceiling, seconds = finetune_side(pair, "llm", private, recipe.llm)
    timings.setdefault("llm_finetune_all", []).append(seconds)
    true = scorer.layout.to_tokens(ceiling_update)
    start = time.perf_counter()
    pooled = scorer.layout.to_tokens(lift(pair, gt, updates))
    timings.setdefault("gt_generate_pooled", []).append(time.perf_counter() - start)
    rows = []
    for index, (_, test) in enumerate(orgs):
        own = scorer.layout.to_tokens(lift(pair, gt, [updates[index]]))
        row = {"org": index + 1, "n_private": len(orgs[index][0]), "n_test": len(test),
               "p_base": scorer.llm_accuracy(None, test), "p_s": p_s[index],
               "p_own": scorer.llm_accuracy(own, test), "p_pooled": scorer.llm_accuracy(pooled, test),
               "p_t": accuracy(ceiling, scorer.tokenizer, test),
               "cos_own": cosine(own, true), "cos_pooled": cosine(pooled, true)}
        row["pgr_own"] = pgr(row["p_own"], row["p_s"], row["p_t"])
        row["pgr_pooled"] = pgr(row["p_pooled"], row["p_s"], row["p_t"])
        rows.append(row)
    return {"task": task, "orgs": rows, **averages(rows)}


def averages(rows: list[dict]) -> dict:
    keys = ("p_base", "p_s", "p_own", "p_pooled", "p_t", "cos_own", "cos_pooled")
    return {f"mean_{k}": sum(r[k] for r in rows) / len(rows) for k in keys}


def print_table(per_org: int, tasks: list[dict], overall: dict) -> None:
    print(f"\n{per_org} private examples per organization ({ORGS * per_org} in all)")
    head = f"{'task':<12}{'org':>4}{'base':>7}{'TinyLM':>8}{'own':>7}{'pooled':>8}{'LLM all':>9}"
    print(head + f"{'cos own':>9}{'cos pooled':>12}")
    for block in tasks:
        for r in block["orgs"]:
            print(f"{block['task']:<12}{r['org']:>4}{r['p_base']:>7.3f}{r['p_s']:>8.3f}{r['p_own']:>7.3f}"
                  f"{r['p_pooled']:>8.3f}{r['p_t']:>9.3f}{r['cos_own']:>9.2f}{r['cos_pooled']:>12.2f}")
        print(f"{block['task']:<12}{'avg':>4}{block['mean_p_base']:>7.3f}{block['mean_p_s']:>8.3f}"
              f"{block['mean_p_own']:>7.3f}{block['mean_p_pooled']:>8.3f}{block['mean_p_t']:>9.3f}"
              f"{block['mean_cos_own']:>9.2f}{block['mean_cos_pooled']:>12.2f}")
    print(f"All tasks and organizations: TinyLM {overall['mean_p_s']:.3f}, own upgrade {overall['mean_p_own']:.3f}"
          f", pooled upgrade {overall['mean_p_pooled']:.3f}, LLM fine-tuned on all data {overall['mean_p_t']:.3f}"
          f"; pooled minus own {overall['pooled_minus_own']:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("pooled.json"))
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--gt-steps", type=int, default=1500)
    parser.add_argument("--per-org", default="600,120,24", help="private examples per organization (sizes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 shared cores: one thread per process (see bench.quality)
    timings: dict = {}

    start = time.perf_counter()
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    timings["pair_build"] = time.perf_counter() - start
    tasks = list(pair.spec.tasks)
    recipe = recipe_for(pair)
    plans = [recipe.plan(task) for task in tasks]
    start = time.perf_counter()
    build_shadow(pair, plans, workers=args.workers)
    timings["shadow_build"] = time.perf_counter() - start
    cfg = replace(recipe.gt, steps=args.gt_steps)
    gt, _ = fit(pair, plans, None, ALL_TASKS, cfg, timings)
    timings["gt_train"] = timings.pop("gt_train_each")[0]

    scorer = Scorer(pair)
    sizes = []
    for per_org in (int(n) for n in args.per_org.split(",")):
        blocks = [pooled_task(pair, recipe, scorer, gt, task, per_org, timings) for task in tasks]
        overall = averages([r for b in blocks for r in b["orgs"]])
        overall["pooled_minus_own"] = overall["mean_p_pooled"] - overall["mean_p_own"]
        sizes.append({"per_org": per_org, "tasks": blocks, "overall": overall})
    for key in ("tiny_finetune_fifth", "llm_finetune_all", "gt_generate_pooled"):
        timings[key] = sum(timings[key]) / len(timings[key])  # per run
    for size in sizes:
        print_table(size["per_org"], size["tasks"], size["overall"])
    print("\nTimes (s): " + ", ".join(f"{k} {v:.3g}" for k, v in timings.items()))
    result = {"pair": pair.id, "gt": ALL_TASKS, "orgs": ORGS, "sizes": sizes, "timings_s": timings,
              "config": {"finetune": asdict(recipe.tiny), "llm_finetune": asdict(recipe.llm), "gt": asdict(cfg),
                         "test_per_org": TEST_PER_ORG}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
