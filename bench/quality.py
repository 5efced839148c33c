"""Quality of generated updates on a pair, in three settings (see ARCHITECTURE.md):

A  one GT per task (the paper's protocol)
B  one GT for the whole pair, task not given
C  a task family whose private keys no shadow run used

    python -m bench.quality --pair toy --out results.json
    python -m bench.quality --pair smol --out bench/results/smol.json --export-gts models/assets/smol/gts

Builds what is missing first (pair, shadow runs, GTs), prints tables, writes JSON. `--settings B` runs one
setting (files of other settings join with `--merge`, so two processes can share the work); `--also paper
routed` trains GTs of other named recipes (models/recipes.py GT_RECIPES) on the same shadow runs and scores
them beside the pair's own as `gt:<name>`; `--gt NAME` and `--runs K` try another recipe or run count
without touching the pair's shipped GTs.

Each task is scored on `--seeds` private draws (new private inputs and fine-tune seeds; the shadow runs and
test questions stay), and every PGR is printed as its mean ± spread over seeds beside the cheap baselines:
`gt_start` (the GT's untrained start: what training added), ridge, the mean shadow update, the nearest
shadow run, `distill` (the LLM fine-tuned on the organization's TinyLM's answers to public prompts: the
task's in A, every task's in B and C) and `gt+distill` (the same distillation started from the GT's update).
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

from bench.experiment import Distiller, PrivateRun, Scorer, cached_private_run, score_task
from models.gt.baselines import Ridge
from models.gt.checkpoint import data_hash, save_gt
from models.gt.network import GradientTransformer, GTArch, GTConfig
from models.gt.train import GTTrainConfig, train_gt, untrained_gt
from models.pairs import ALL_TASKS, ensure_pair
from models.recipes import GT_RECIPES, Recipe, gt_recipe, recipe_for, upgrade_recipe
from models.training.shadow import build_shadow, load_shadow, shadow_privacy
from models.upgrade.checks import public_prompts

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


def distiller(pair, task: str | None, cfg, from_gt: bool = True) -> Distiller | None:
    """The distillation baselines' prompts: the task's public pool when the task is given (A), every task's
    when it is not (B, C); None without a config (--no-distill); `gt+distill` too unless --no-gt-distill."""
    return None if cfg is None else Distiller(public_prompts(pair, task)[0], cfg, from_gt)


def score_runs(runs: list[PrivateRun], scorer: Scorer, model: GradientTransformer, data, cfg: GTTrainConfig,
               distill_with: Distiller | None, others: dict[str, GradientTransformer] | None = None,
               bound: bool = False) -> list[dict]:
    """Rows of a quality table: each private run's GT update beside the GT's untrained start, the
    baselines fitted on the same shadow runs, the GTs of other recipes (`others`) and, with `bound`, the
    best update the shadow runs' span holds."""
    ridge, start = Ridge(data), untrained_gt(data, cfg)
    return [score_task(run, scorer, model, data, ridge, start, distill_with, others, bound) for run in runs]


def fit_others(names: list[str], data, timings: dict) -> dict[str, GradientTransformer]:
    """GTs of other named recipes on the same shadow runs, scored beside the pair's own (`gt:<name>`)."""
    models = {}
    for name in names:
        start = time.perf_counter()
        models[name] = train_gt(data, GT_RECIPES[name])[0]
        timings.setdefault(f"gt_train_each:{name}", []).append(time.perf_counter() - start)
    return models


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


METHODS = ("gt", "gt_start", "ridge", "mean_update", "nearest", "distill", "gt+distill")


def spread(values: list[float]) -> dict:
    """Mean, population standard deviation and count of the finite values."""
    finite = [v for v in values if v == v]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = sum(finite) / len(finite)
    return {"mean": mean, "std": (sum((v - mean) ** 2 for v in finite) / len(finite)) ** 0.5, "n": len(finite)}


def method_value(row: dict, method: str, key: str = "pgr") -> float:
    """A run's `key` (pgr, cos, r2_vs_mean) for `method`; NaN where the run did not measure it."""
    got = row if method == "gt" else row["baselines"].get(method, {})
    return got.get(key, float("nan"))


def methods_of(runs: list[dict]) -> list[str]:
    """The methods rows report: the fixed ones, then the others (other recipes' GTs `gt:<name>`, the span's
    bound) in their order."""
    others = dict.fromkeys(m for r in runs for m in r["baselines"] if m not in METHODS)
    return [*METHODS, *others]


def setting(name: str, runs: list[dict]) -> dict:
    """A setting's rows (one per task and seed) summarised: each method's PGR per task, mean and spread
    over seeds; the setting's average per seed, and its mean and spread over seeds."""
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    methods = methods_of(runs)
    seeds = sorted({r["seed"] for r in runs})
    summary = []
    for task in tasks:
        mine = [r for r in runs if r["task"] == task]
        first = min(mine, key=lambda r: r["seed"])
        pgr = {m: spread([method_value(r, m) for r in mine]) for m in methods}
        summary.append({"task": task, "n_test": first["n_test"], "gt_sample": first["gt_sample"],
                        **{k: spread([r[k] for r in mine]) for k in ("p_base", "p_s", "p_t", "p_gt")},
                        "pgr_by_method": pgr, "pgr": pgr["gt"]["mean"], "pgr_sd": pgr["gt"]["std"],
                        "seeds": len(mine)})
    averages: dict[str, dict] = {"pgr": {}, "cos": {}, "r2_vs_mean": {}}
    for key, by_method in averages.items():
        for method in methods:
            per_seed = [spread([method_value(r, method, key) for r in runs if r["seed"] == s])["mean"] for s in seeds]
            by_method[method] = {**spread(per_seed), "per_seed": per_seed}
    # Cosine and R2 (relative to the mean shadow update) of each method's update to the LLM's own update on
    # the private data: where every method's PGR saturates, these still tell the maps apart.
    return {"tasks": summary, "runs": runs, "average_pgr": averages["pgr"]["gt"]["mean"],
            "average_by_method": averages["pgr"], "average_cos_by_method": averages["cos"],
            "average_r2_by_method": averages["r2_vs_mean"]}


def print_table(name: str, block: dict) -> None:
    gt = block["average_by_method"]["gt"]
    print(f"\nSetting {name}: average PGR {gt['mean']:.1%} ± {gt['std']:.1%} over {gt['n']} seeds")
    methods = list(block["average_by_method"])
    print(f"{'task':<12}{'base':>6}{'P_S':>6}{'P_T':>6}" + "".join(f"{m:>15}" for m in methods))
    for r in block["tasks"]:
        line = f"{r['task']:<12}{r['p_base']['mean']:>6.2f}{r['p_s']['mean']:>6.2f}{r['p_t']['mean']:>6.2f}"
        for m in methods:
            x = r["pgr_by_method"][m]
            line += f"{x['mean']:>9.1%}±{x['std']:>4.0%}" if x["n"] else f"{'-':>15}"
        print(line)
    for label, key, fmt in (("average PGR", "average_by_method", "{:>9.1%}±{:>4.0%}"),
                            ("average cos", "average_cos_by_method", "{:>9.3f}±{:>5.3f}"),
                            ("average R2 vs mean", "average_r2_by_method", "{:>9.3f}±{:>5.3f}")):
        line = f"{label:<30}"
        for m in methods:
            x = block[key][m]
            line += fmt.format(x["mean"], x["std"]) if x["n"] else f"{'-':>15}"
        print(line)


def merge(parts: list[dict]) -> dict:
    """One results file from runs of other settings with the same configuration (e.g. A and C in one
    process, B in another): their settings side by side, their timings together."""
    first = parts[0]
    per_part = ("also", "distill", "distill_from_gt")  # what each process may choose for its own settings

    def shared(part: dict) -> tuple:
        return part["pair"], part["seeds"], {k: v for k, v in part["config"].items() if k not in per_part}

    for part in parts[1:]:
        if shared(part) != shared(first):
            raise SystemExit("the files differ in pair, configuration or seeds: not one benchmark")
        if set(part["settings"]) & set(first["settings"]):
            raise SystemExit(f"setting {sorted(set(part['settings']) & set(first['settings']))} is in two files")
    timings: dict = {}
    for part in parts:
        for key, value in part["timings_s"].items():
            if isinstance(value, list):
                timings[key] = timings.get(key, []) + value
            elif key in ("pair_build", "shadow_build"):  # each process checked or built them: the longest
                timings[key] = max(timings.get(key, 0.0), value)
            else:
                timings.setdefault(key, value)
    settings = {name: {**block, "config": {k: part["config"].get(k) for k in per_part}}
                for part in parts for name, block in part["settings"].items()}
    config = {k: v for k, v in first["config"].items() if k not in per_part}
    return {**first, "config": config, "settings": dict(sorted(settings.items())), "timings_s": totals(timings)}


def totals(timings: dict) -> dict:
    """The timings with what derives from the per-GT and per-distillation lists: GT training in all, and
    each distillation's mean."""
    timings["gt_train"] = sum(timings.get("gt_train_each", []))
    for key in ("distill_each", "gt+distill_each"):
        if timings.get(key):
            timings[key.replace("_each", "_mean")] = sum(timings[key]) / len(timings[key])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--export-gts", type=Path, default=None,
                        help="also copy the trained GTs here (for the smol pair: models/assets/smol/gts)")
    parser.add_argument("--gt-steps", type=int, default=None, help="override the recipe's GT training steps")
    parser.add_argument("--gt", choices=sorted(GT_RECIPES), default=None,
                        help="a named GT recipe instead of the pair's own (paper: the paper's network)")
    parser.add_argument("--also", nargs="+", choices=sorted(GT_RECIPES), default=[],
                        help="GTs of other recipes trained on the same runs and scored beside it (gt:<name>)")
    parser.add_argument("--runs", type=int, default=None, help="shadow runs per task (default: the recipe's)")
    parser.add_argument("--settings", default="ABC", help="which settings to run, e.g. B")
    parser.add_argument("--seeds", type=int, default=3,
                        help="private data draws and fine-tune seeds per task (each PGR is shown with its spread)")
    parser.add_argument("--no-distill", action="store_true",
                        help="skip the distillation baselines (about 13 s each on the toy pair, minutes on smol)")
    parser.add_argument("--no-gt-distill", action="store_true",
                        help="distil from the pair's init only, not also from the GT's update (half the cost)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="write one results file from these (other settings, same configuration) and stop")
    args = parser.parse_args()
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
        for name, block in result["settings"].items():
            print_table(name, block)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
        print(f"\nwrote {args.out}")
        return
    if not args.settings or set(args.settings) - set("ABC"):
        parser.error(f"--settings takes letters of ABC, not {args.settings!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    # One thread: on 2 shared cores, two processes each spinning 2 OpenMP threads ran up to 100x slower.
    torch.set_num_threads(1)
    timings: dict = {}

    start = time.perf_counter()
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    timings["pair_build"] = time.perf_counter() - start

    recipe: Recipe = recipe_for(pair)
    if args.runs:
        recipe = replace(recipe, shadow_k=args.runs)
    family, seen_keys, unseen = recipe.unseen
    tasks = list(pair.spec.tasks)
    c_train = [f"{family}-{k}" for k in seen_keys]
    c_test = [f"{family}-{k}" for k in unseen]
    scored = tasks if set(args.settings) & set("AB") else []  # the tasks A and B score
    needed = scored + c_train * ("C" in args.settings)
    all_plans = {t: recipe.plan(t) for t in sorted(set(needed))}
    start = time.perf_counter()
    build_shadow(pair, list(all_plans.values()), workers=args.workers)
    timings["shadow_build"] = time.perf_counter() - start
    timings["shadow_runs"] = len(all_plans) * recipe.shadow_k

    scorer = Scorer(pair)
    seeds = range(args.seeds)
    private = {(t, seed): cached_private_run(pair, scorer, t, recipe.tiny, recipe.llm, seed)
               for t in scored + c_test * ("C" in args.settings)
               for seed in seeds}
    timings["llm_finetune_private"] = sum(r.llm_seconds for r in private.values()) / len(private)
    distill_cfg = None if args.no_distill else upgrade_recipe(pair.id).distill
    pooled = distiller(pair, None, distill_cfg, not args.no_gt_distill)  # B and C: the task is not given

    cfg = gt_recipe(recipe, args.gt)
    cfg = replace(cfg, steps=args.gt_steps) if args.gt_steps else cfg
    # A GT of another recipe or on other runs than the pair's own goes beside the pair's GTs, not over them.
    own = args.gt is None and args.runs is None
    if args.export_gts is not None and not own:
        parser.error("--export-gts takes the pair's own recipe (no --gt, no --runs)")

    def gt_dir(gt_id: str) -> Path | None:
        return pair.gt_dir(gt_id) if own else None

    settings = {}
    if "A" in args.settings:
        runs = []
        for task in tasks:
            model, data = fit(pair, [all_plans[task]], gt_dir(task), task, cfg, timings)
            own_pool = distiller(pair, task, distill_cfg, not args.no_gt_distill)
            runs += score_runs([private[task, s] for s in seeds], scorer, model, data, cfg, own_pool,
                               fit_others(args.also, data, timings))
        settings["A"] = setting("A", runs)
    model_b = None
    if "B" in args.settings:
        model_b, data_b = fit(pair, [all_plans[t] for t in tasks], gt_dir(ALL_TASKS), ALL_TASKS, cfg,
                              timings)
        settings["B"] = setting("B", score_runs([private[t, s] for t in tasks for s in seeds], scorer, model_b,
                                                data_b, cfg, pooled, fit_others(args.also, data_b, timings)))
    if "C" in args.settings:
        model_c, data_c = fit(pair, [all_plans[t] for t in c_train], None, f"{family}-seen-keys", cfg, timings)
        settings["C"] = setting("C", score_runs([private[t, s] for t in c_test for s in seeds], scorer, model_c,
                                                data_c, cfg, pooled, fit_others(args.also, data_c, timings)))
    for block in settings.values():
        for method in ("distill", "gt+distill"):
            spent = [r["baselines"][method]["seconds"] for r in block["runs"] if method in r["baselines"]]
            if spent:
                timings.setdefault(f"{method}_each", []).extend(spent)

    if model_b is not None:
        src = private[tasks[0], 0].tiny_tokens[None]
        timings["gt_generate"], timings["gt_generate_no_cache"] = generate_seconds(model_b, src)
    # The toy LLM has 4 layers, where a cache saves little; SmolLM2-135M has 30 layers of 3,840 numbers.
    smol_like = GradientTransformer(GTConfig(12, 1536, 30, 3840, GTArch(d_model=256, n_heads=8, d_ff=1024))).eval()
    timings["gt_generate_30_layers"], timings["gt_generate_30_layers_no_cache"] = generate_seconds(
        smol_like, torch.randn(1, 12, 1536))
    totals(timings)

    for name, block in settings.items():
        print_table(name, block)
    print("\nTimes (s): " + ", ".join(f"{k} {v:.3g}" for k, v in timings.items() if not isinstance(v, list)))
    for label, key in ((f"{pair.id}'s LLM layers", "gt_generate"),
                       ("30 LLM layers x 3840 (SmolLM2-135M's shape)", "gt_generate_30_layers")):
        if key not in timings:
            continue
        ratio = timings[key + '_no_cache'] / timings[key]
        print(f"generate with the KV cache: {ratio:.2f}x as fast as without ({label})")
    result = {"pair": pair.id, "settings": settings, "timings_s": timings, "seeds": args.seeds,
              "config": {"gt_recipe": args.gt or "the pair's own", "also": args.also,
                         "distill_from_gt": distill_cfg is not None and not args.no_gt_distill,
                         "distill": asdict(distill_cfg) if distill_cfg else None,
                         "shadow_k": recipe.shadow_k, "finetune": asdict(recipe.tiny),
                         "llm_finetune": asdict(recipe.llm), "subset_size": recipe.subset_size,
                         "keep_last": recipe.keep_last, "gt": asdict(cfg),
                         "setting_c": {"family": family, "train_keys": list(seen_keys), "test_keys": list(unseen)}}}
    if args.export_gts is not None:  # the GTs this run trained: A's per task, B's for the pair
        for gt_id in tasks * ("A" in args.settings) + [ALL_TASKS] * ("B" in args.settings):
            shutil.copytree(pair.gt_dir(gt_id), args.export_gts / gt_id, dirs_exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
