"""Upgrade modes side by side: the GT's update, distillation from the organization's TinyLM, and `auto` (which,
when it does not deliver the GT's update, distils from the pair's init and from the GT's update and delivers
the one closest to the TinyLM; `auto-init`: from the init only, as it once did), per
setting (A: the task's own GT; B: the pair's GT, task not given; C: a key no shadow run used; L: each key of
bench.unseen's families held out in turn, the GT trained on the family's other keys) and task;
and how well the quality verdict separates upgrades that recover at least half the gap (PGR >= 0.5) from
those that do not.

    python -m bench.modes --pair toy --seeds 3 --out bench/results/modes-toy.json
    python -m bench.modes --pair toy --settings C --seeds 3 --out bench/results/modes-toy-C.json
    python -m bench.modes --pair smol --settings B --prompts own --out bench/results/modes-smol-B.json
    python -m bench.modes --pair smol --settings L --prompts own --modes auto --first-seed 1 --keys 1 2 3 --out a.json
    python -m bench.modes --merge a.json b.json --out bench/results/modes-smol-L-120.json  # b.json: --keys 4 5 6

Reuses what bench.quality builds (pair, shadow runs, GTs, private runs; missing ones are built). Each upgrade
runs through models.upgrade.run_upgrade as a worker runs it, with the organization's prompts (`own`: its
task's public prompts stand in for its question format) or without (`public`: the pair's public prompts).
The summary gives average PGR and average accuracy (`average_p`): where the LLM's own fine-tune learns a key
worse than the TinyLM did (P_T < P_S, as rotate-2 can), PGR turns signs and only accuracy reads plainly.
Where auto judged several candidates, each one's test accuracy is scored too (`candidates_p`), and `choice`
says how often the probe check delivered the best of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.experiment import PrivateRun, Scorer, cached_private_run
from bench.quality import fit, spread
from bench.unseen import families_of, without
from models.data.evaluate import accuracy, pgr
from models.data.tasks import FAMILIES
from models.lora.update import LoraLayout, Update, add
from models.pairs import ALL_TASKS, Pair, ensure_pair
from models.pairs.tasks import task_splits
from models.recipes import Recipe, recipe_for, upgrade_recipe
from models.training.finetune import write_adapter_folder
from models.training.shadow import build_shadow
from models.upgrade import run_upgrade
from models.upgrade.quality import confidence
from models.upgrade.run import made_by

log = logging.getLogger("bench.modes")
MODES = ("gt", "distill", "auto", "auto-init")  # auto-init: auto distilling from the pair's init, as before
OWN_PROMPTS = 1000  # the organization's attached prompts, in `own` runs


def leave_one_out(pair: Pair) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Setting L: each key of bench.unseen's families and the GT asked for it, and each such GT's tasks (the
    family's other keys: the GT bench.unseen trains for that key, on the same runs and recipe)."""
    gts, trained_on = {}, {}
    for family in families_of(pair, None):
        for key in FAMILIES[family].keys:
            gts[f"{family}-{key}"], seen = without(family, key)
            trained_on[gts[f"{family}-{key}"]] = seen
    return gts, trained_on


def adapter_file(pair: Pair, run: PrivateRun, folder: Path) -> Path:
    """The organization's TinyLM adapter of a private run, as it would upload it."""
    update = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).from_tokens(run.tiny_tokens)
    write_adapter_folder(folder, pair.spec.lora, pair.id + "-tiny", add(pair.init("tiny"), update))
    return folder / "adapter_model.safetensors"


def upgrade_row(pair: Pair, scorer: Scorer, run: PrivateRun, gt_id: str | None, mode: str, prompts: str,
                work: Path) -> dict:
    """One upgrade as a worker runs it, scored on the task's test set."""
    own = [ex.prompt for ex in task_splits(pair, run.task).public[:OWN_PROMPTS]] if prompts == "own" else None
    start = time.perf_counter()
    result = run_upgrade(pair, gt_id, [adapter_file(pair, run, work / "adapter")], work / "out",
                         mode=mode.removesuffix("-init"), prompts=own, distill_from_gt=not mode.endswith("-init"))
    seconds = time.perf_counter() - start
    layout = LoraLayout(pair.init("llm"), pair.spec.lora.targets)

    def score(update: Update) -> float:
        return accuracy(scorer.llm_model(layout.to_tokens(update)), scorer.tokenizer, run.test)

    p = score(result.update)
    quality = result.quality
    # auto judged several upgrades: each one's test accuracy, to tell whether the probe check chose the best
    scored = ({made_by(r): score(r.update) for r in result.alternatives} | {made_by(result): p}
              if result.alternatives else None)
    return {"task": run.task, "mode": mode, "prompts": prompts, "used": result.mode, "p": p,
            "pgr": pgr(p, run.p_s, run.p_t), "seconds": round(seconds, 2), "verdict": quality["verdict"],
            "start": (quality.get("distill") or {}).get("start"), "candidates": quality.get("candidates"),
            "gain": quality["gain"], "relative": (quality.get("similarity") or {}).get("relative"),
            "margin": (quality.get("similarity") or {}).get("margin"), "confidence": confidence(quality),
            "reason": quality["reason"], "agreement": quality["agreement"], "p_s": run.p_s, "p_t": run.p_t,
            "p_base": run.p_base, "candidates_p": scored}


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a positive outscores a negative (ties count half); NaN without both kinds."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def separation(rows: list[dict]) -> dict:
    """How well the report tells upgrades with PGR >= 0.5 from the rest (auto's rows repeat gt's or distill's)."""
    judged = [r for r in rows if not r["mode"].startswith("auto") and r["pgr"] == r["pgr"]]
    labels = [r["pgr"] >= 0.5 for r in judged]
    verdict_ok = [r["verdict"] == "ok" for r in judged]
    agree = sum(v == y for v, y in zip(verdict_ok, labels, strict=True))
    return {"upgrades": len(judged), "recovering_half": sum(labels),
            "auroc_confidence": auroc([r["confidence"] for r in judged], labels),
            "auroc_gain_alone": auroc([r["gain"] for r in judged], labels),
            "verdict_accuracy": agree / len(judged) if judged else float("nan"),
        "ok_precision": (sum(y for v, y in zip(verdict_ok, labels, strict=True) if v) / sum(verdict_ok)
                         if any(verdict_ok) else float("nan"))}


def print_rows(rows: list[dict]) -> None:
    print(f"{'setting':<8}{'task':<12}{'prompts':<8}{'mode':<8}{'used':<8}{'P':>6}{'PGR':>8}{'gain':>7}"
          f"{'relative':>9}{'verdict':>16}{'s':>7}")
    for r in rows:
        relative = f"{r['relative']:.2f}" if r["relative"] is not None else "-"
        print(f"{r['setting']:<8}{r['task']:<12}{r['prompts']:<8}{r['mode']:<8}{r['used']:<8}{r['p']:>6.2f}"
              f"{r['pgr']:>8.1%}{r['gain']:>7.3f}{relative:>9}{r['verdict']:>16}{r['seconds']:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("modes.json"))
    parser.add_argument("--prompts", choices=("own", "public", "both"), default="both")
    parser.add_argument("--settings", default="ABC", help="which settings to run, e.g. BC (L: one key held out at "
                        "a time, as bench.unseen)")
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--seeds", type=int, default=1, help="private draws (data and runs) per task")
    parser.add_argument("--first-seed", type=int, default=0, help="the first private draw")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="which modes to run")
    parser.add_argument("--keys", nargs="+", type=int, help="setting L: only these held-out keys (two processes "
                        "can share the keys and --merge their files)")
    parser.add_argument("--merge", nargs="+", type=Path, help="join the rows of these files (of one pair) into "
                        "--out, and summarise them; runs nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.merge:
        return merge(args.merge, args.out)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe: Recipe = recipe_for(pair)
    family, seen_keys, unseen = recipe.unseen
    tasks, c_train = list(pair.spec.tasks), [f"{family}-{k}" for k in seen_keys]
    c_test = [f"{family}-{k}" for k in unseen]
    scorer = Scorer(pair)
    c_gt = f"{family}-seen-keys"
    gts = {"A": {t: t for t in tasks}, "B": {t: ALL_TASKS for t in tasks}, "C": {t: c_gt for t in c_test}, "L": {}}
    trained_on = {**{t: [t] for t in tasks}, ALL_TASKS: tasks, c_gt: c_train}
    if "L" in args.settings:
        gts["L"], held_out = leave_one_out(pair)
        trained_on.update(held_out)
        if args.keys:
            gts["L"] = {t: gt_id for t, gt_id in gts["L"].items() if int(t.rsplit("-", 1)[1]) in args.keys}
    missing = sorted({gts[name][t] for name in args.settings for t in gts[name]} - set(pair.gt_ids()))
    plans = {t: recipe.plan(t) for t in sorted({t for gt_id in missing for t in trained_on[gt_id]})}
    build_shadow(pair, list(plans.values()), workers=args.workers)  # only what the missing GTs learn from
    timings: dict = {}
    for gt_id in missing:  # bench.quality leaves A's and B's; C's GT is kept here
        fit(pair, [plans[t] for t in trained_on[gt_id]], pair.gt_dir(gt_id), gt_id, recipe.gt, timings)
    variants = ("own", "public") if args.prompts == "both" else (args.prompts,)
    rows: list[dict] = []
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-modes-", dir=args.data_dir) as folder:  # its own: runs side by side
        for seed in seeds:
            for name in args.settings:
                for task, gt_id in gts[name].items():
                    run = cached_private_run(pair, scorer, task, recipe.tiny, recipe.llm, seed)
                    for prompts in variants:
                        for mode in args.modes:
                            row = upgrade_row(pair, scorer, run, gt_id, mode, prompts, Path(folder))
                            rows.append({"setting": name, "gt_id": gt_id, "seed": seed, **row})
                            log.info("%s %s seed %d %s %s: PGR %.1f%% (%s, gain %.3f)", name, task, seed,
                                     prompts, mode, 100 * row["pgr"], row["verdict"], row["gain"])
    recipe_used = upgrade_recipe(pair.id)
    write(args.out, pair.id, rows, {"quality": asdict(recipe_used.quality), "distill": asdict(recipe_used.distill)})


def summarise(rows: list[dict]) -> dict:
    """Average PGR and accuracy per setting, prompts and mode (each with its spread over private draws), mean
    seconds per mode, and how well the verdict separates upgrades."""
    cells = {"/".join(cell): [r for r in rows if (r["setting"], r["prompts"], r["mode"]) == cell]
             for cell in dict.fromkeys((r["setting"], r["prompts"], r["mode"]) for r in rows)}
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    return {"separation": separation(rows),
            "average_pgr": {cell: _mean([r["pgr"] for r in mine]) for cell, mine in cells.items()},
            "average_p": {cell: _mean([r["p"] for r in mine]) for cell, mine in cells.items()},
            "pgr_sd_over_seeds": {cell: spread([_mean([r["pgr"] for r in mine if r["seed"] == seed])
                                                for seed in sorted({r["seed"] for r in mine})])["std"]
                                  for cell, mine in cells.items()},
            "mean_seconds": {m: _mean([r["seconds"] for r in rows if r["mode"] == m]) for m in modes},
            "choice": choice(rows)}


def choice(rows: list[dict]) -> dict:
    """Of auto's upgrades that judged several candidates: how often the probe check delivered the one with the
    best test accuracy, and the average accuracy of what it delivered, of the best and of each kind of
    candidate."""
    judged = [r for r in rows if r.get("candidates_p")]
    kinds = sorted({k for r in judged for k in r["candidates_p"]})
    return {"upgrades": len(judged),
            "chose_best": sum(r["p"] >= max(r["candidates_p"].values()) for r in judged),
            "average_p_delivered": _mean([r["p"] for r in judged]),
            "average_p_best": _mean([max(r["candidates_p"].values()) for r in judged]),
            "average_p_by_candidate": {k: _mean([r["candidates_p"][k] for r in judged if k in r["candidates_p"]])
                                       for k in kinds}}


def write(out: Path, pair_id: str, rows: list[dict], recipe_used: dict) -> None:
    """Print the rows and their summary and write them, with the upgrade recipe they ran under, to `out`."""
    print_rows(rows)
    summary = summarise(rows)
    print("\n" + json.dumps(summary, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pair": pair_id, "rows": rows, "summary": summary, **recipe_used}, indent=2,
                              sort_keys=True))
    print(f"wrote {out}")


def merge(files: list[Path], out: Path) -> None:
    """Join the rows of several runs of one pair and upgrade recipe (e.g. two processes' held-out keys) into one
    file."""
    results = [json.loads(f.read_text()) for f in files]
    pairs = {r["pair"] for r in results}
    recipes = {json.dumps({k: r.get(k) for k in ("quality", "distill")}, sort_keys=True) for r in results}
    if len(pairs) != 1 or len(recipes) != 1:
        raise SystemExit(f"the files hold different pairs or upgrade recipes: {sorted(pairs)}")
    rows = [row for r in results for row in r["rows"]]
    cells = [(r["setting"], r["task"], r["seed"], r["prompts"], r["mode"]) for r in rows]
    if len(set(cells)) < len(cells):
        raise SystemExit("the files hold two results of one upgrade (setting, task, seed, prompts and mode)")
    write(out, pairs.pop(), rows, json.loads(recipes.pop()))


def _mean(values: list[float]) -> float:
    return spread(values)["mean"]


if __name__ == "__main__":
    main()
