"""Quality of generated updates on a pair, in three settings (see ARCHITECTURE.md):

A  one GT per task (the paper's protocol)
B  one GT for the whole pair, task not given
C  a task family whose private keys no shadow run used

    python -m bench.quality --pair toy --out results.json
    python -m bench.quality --pair smol --out bench/results/smol.json --export-gts models/assets/smol/gts

Builds what is missing first (pair, shadow runs, GTs), prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.experiment import Scorer, cached_private_run, score_task
from models.gt.baselines import Ridge
from models.gt.checkpoint import data_hash, save_gt
from models.gt.network import GradientTransformer, GTArch, GTConfig
from models.gt.train import GTTrainConfig, train_gt
from models.pairs import ALL_TASKS, ensure_pair
from models.recipes import Recipe, recipe_for
from models.training.shadow import build_shadow, load_shadow, shadow_privacy

log = logging.getLogger("bench.quality")


def fit(pair, plans, gt_dir: Path | None, label: str, cfg: GTTrainConfig, timings: dict):
    data = load_shadow(pair, plans)
    start = time.perf_counter()
    model, info = train_gt(data, cfg)
    timings.setdefault("gt_train_each", []).append(time.perf_counter() - start)
    if gt_dir is not None:
        save_gt(model, gt_dir, {"pair": pair.id, "task": label, "tasks": sorted({p.task for p in plans}),
                                "data_sha256": data_hash(data.src, data.tgt), "trained_by": "bench.quality",
                                "shadow_privacy": shadow_privacy(plans), **info}, data)
    return model, data


def generate_seconds(model: GradientTransformer, src: torch.Tensor, reps: int = 10) -> tuple[float, float]:
    """Seconds per generate() call with and without the key/value cache, timed alternately."""
    totals = {True: 0.0, False: 0.0}
    for use_cache in (True, False):
        model.generate(src, use_cache=use_cache)  # warm-up
    for _ in range(reps):
        for use_cache in (True, False):
            start = time.perf_counter()
            model.generate(src, use_cache=use_cache)
            totals[use_cache] += time.perf_counter() - start
    return totals[True] / reps, totals[False] / reps


def setting(name: str, rows: list[dict]) -> dict:
    finite = [r["pgr"] for r in rows if r["pgr"] == r["pgr"]]
    return {"tasks": rows, "average_pgr": sum(finite) / len(finite) if finite else float("nan")}


def print_table(name: str, block: dict) -> None:
    print(f"\nSetting {name}: average PGR {block['average_pgr']:.1%}")
    head = f"{'task':<12}{'base':>6}{'P_S':>6}{'P_T':>6}{'P_GT':>6}{'PGR':>8}{'cos':>6}{'R2m':>7}"
    head += "".join(f"{b:>22}" for b in ("ridge pgr/cos", "mean pgr/cos", "nearest pgr/cos"))
    print(head)
    for r in block["tasks"]:
        line = (f"{r['task']:<12}{r['p_base']:>6.2f}{r['p_s']:>6.2f}{r['p_t']:>6.2f}{r['p_gt']:>6.2f}"
                f"{r['pgr']:>8.1%}{r['cos']:>6.2f}{r['r2_vs_mean']:>7.2f}")
        for b in ("ridge", "mean_update", "nearest"):
            x = r["baselines"][b]
            line += f"{x['pgr']:>14.1%} / {x['cos']:>5.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--export-gts", type=Path, default=None,
                        help="also copy the trained GTs here (for the smol pair: models/assets/smol/gts)")
    parser.add_argument("--gt-steps", type=int, default=None, help="override the recipe's GT training steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    # One thread: on 2 shared cores, two processes each spinning 2 OpenMP threads ran up to 100x slower.
    torch.set_num_threads(1)
    timings: dict = {}

    start = time.perf_counter()
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    timings["pair_build"] = time.perf_counter() - start

    recipe: Recipe = recipe_for(pair)
    family, seen_keys, unseen = recipe.unseen
    tasks = list(pair.spec.tasks)
    c_train = [f"{family}-{k}" for k in seen_keys]
    c_test = [f"{family}-{k}" for k in unseen]
    all_plans = {t: recipe.plan(t) for t in sorted(set(tasks + c_train))}
    start = time.perf_counter()
    build_shadow(pair, list(all_plans.values()), workers=args.workers)
    timings["shadow_build"] = time.perf_counter() - start
    timings["shadow_runs"] = len(all_plans) * recipe.shadow_k

    scorer = Scorer(pair)
    private = {t: cached_private_run(pair, scorer, t, recipe.tiny, recipe.llm) for t in tasks + c_test}
    timings["llm_finetune_private"] = sum(r.llm_seconds for r in private.values()) / len(private)

    cfg = replace(recipe.gt, steps=args.gt_steps) if args.gt_steps else recipe.gt
    settings = {}
    rows = []
    for task in tasks:  # A
        model, data = fit(pair, [all_plans[task]], pair.gt_dir(task), task, cfg, timings)
        rows.append(score_task(private[task], scorer, model, data, Ridge(data)))
    settings["A"] = setting("A", rows)
    model_b, data_b = fit(pair, [all_plans[t] for t in tasks], pair.gt_dir(ALL_TASKS), ALL_TASKS, cfg, timings)
    ridge_b = Ridge(data_b)
    settings["B"] = setting("B", [score_task(private[t], scorer, model_b, data_b, ridge_b) for t in tasks])
    model_c, data_c = fit(pair, [all_plans[t] for t in c_train], None, f"{family}-seen-keys", cfg, timings)
    ridge_c = Ridge(data_c)
    settings["C"] = setting("C", [score_task(private[t], scorer, model_c, data_c, ridge_c) for t in c_test])

    src = private[tasks[0]].tiny_tokens[None]
    timings["gt_generate"], timings["gt_generate_no_cache"] = generate_seconds(model_b, src)
    # The toy LLM has 4 layers, where a cache saves little; SmolLM2-135M has 30 layers of 3,840 numbers.
    smol_like = GradientTransformer(GTConfig(12, 1536, 30, 3840, GTArch(d_model=256, n_heads=8, d_ff=1024))).eval()
    timings["gt_generate_30_layers"], timings["gt_generate_30_layers_no_cache"] = generate_seconds(
        smol_like, torch.randn(1, 12, 1536))
    timings["gt_train"] = sum(timings["gt_train_each"])

    for name, block in settings.items():
        print_table(name, block)
    print("\nTimes (s): " + ", ".join(f"{k} {v:.3g}" for k, v in timings.items() if not isinstance(v, list)))
    for label, key in ((f"{pair.id}, {model_b.cfg.tgt_layers} LLM layers", "gt_generate"),
                       ("30 LLM layers x 3840 (SmolLM2-135M's shape)", "gt_generate_30_layers")):
        ratio = timings[key + '_no_cache'] / timings[key]
        print(f"generate with the KV cache: {ratio:.2f}x as fast as without ({label})")
    result = {"pair": pair.id, "settings": settings, "timings_s": timings,
              "config": {"shadow_k": recipe.shadow_k, "finetune": asdict(recipe.tiny),
                         "llm_finetune": asdict(recipe.llm), "subset_size": recipe.subset_size,
                         "keep_last": recipe.keep_last, "gt": asdict(cfg),
                         "setting_c": {"family": family, "train_keys": list(seen_keys), "test_keys": list(unseen)}}}
    if args.export_gts is not None:
        for gt_id in [*tasks, ALL_TASKS]:
            shutil.copytree(pair.gt_dir(gt_id), args.export_gts / gt_id, dirs_exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
