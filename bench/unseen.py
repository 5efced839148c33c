"""Setting C, leave one key out: for every key of each family with at least 7 keys (smol: `pick6`, 6 keys), a
GT trained on the shadow runs of the family's other keys is asked for the held-out key's update, beside the
same baselines as `bench.quality` (the GT's start, ridge, mean, nearest, distillation from the pair's init and
from the GT's update). A key between seen keys is interpolation; the first or last key is extrapolation.

    python -m bench.unseen --pair toy --out bench/results/unseen-toy.json
    python -m bench.unseen --pair toy --families rotate --runs 8 --seeds 1   # a quicker look
    python -m bench.unseen --show bench/results/unseen-toy.json             # the accuracy table of a result
    python -m bench.unseen --pair smol --bound --chunk 4 --keys 1 2 3 --out a.json   # beside --keys 4 5 6 --out b.json
    python -m bench.unseen --merge a.json b.json --out bench/results/unseen-smol.json
    python -m bench.unseen --pair smol --prompts own --chunk 4 --first-seed 1 --keys 1 2 3 --out c.json  # a second
    python -m bench.unseen --merge bench/results/unseen-smol-own.json c.json d.json --out ...  # draw, joined per key

Builds what is missing first (pair, shadow runs of every key, private runs), prints a table per family and
the averages of interpolated and extrapolated keys, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.experiment import Distiller, Scorer, cached_private_run
from bench.quality import fit, methods_of, print_table, score_runs, setting
from models.data.tasks import FAMILIES
from models.gt.reference import build_reference
from models.gt.train import untrained_gt
from models.pairs import ensure_pair
from models.recipes import recipe_for, upgrade_recipe
from models.training.shadow import build_shadow
from models.upgrade.checks import public_prompts

log = logging.getLogger("bench.unseen")
MIN_KEYS = 7
# Families held out by default where none of the pair's own has MIN_KEYS keys: smol's tasks have at most 5.
DEFAULT_FAMILIES = {"smol": ["pick6"]}


def families_of(pair, names: list[str] | None) -> list[str]:
    """The pair's task families with at least MIN_KEYS keys (or those named, or the pair's default)."""
    present = list(dict.fromkeys(t.rsplit("-", 1)[0] for t in pair.spec.tasks))
    chosen = names or DEFAULT_FAMILIES.get(pair.id) or [f for f in present if len(FAMILIES[f].keys) >= MIN_KEYS]
    for name in chosen:
        if name not in FAMILIES:
            raise SystemExit(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return chosen


def without(family: str, key: int) -> tuple[str, list[str]]:
    """The GT asked for a held-out key: its id, and the family's other keys it is trained on."""
    return f"{family}-without-{key}", [f"{family}-{k}" for k in FAMILIES[family].keys if k != key]


def distill_prompts(pair, families: list[str], own: bool = False) -> list:  # noqa: ANN001
    """What distillation labels when the task is not given: every task's public prompts of the pair, and those of
    the held-out families where the pair has no task of theirs (the format is public, only the key is hidden).
    `own`: the families' prompts alone, standing in for prompts the organization attaches in its own format."""
    pool = [] if own else public_prompts(pair, None)[0]
    extra = [p for f in families for p in public_prompts(pair, f"{f}-{FAMILIES[f].keys[0]}")[0]]  # keys share inputs
    return list(dict.fromkeys(pool + extra))


def summarise(rows: list[dict]) -> dict:
    """Each method's average PGR over the keys of `rows` (each key's mean over seeds)."""
    out = {}
    for method in methods_of([run for row in rows for run in row["runs"]]):
        means = [r["pgr_by_method"][method]["mean"] for r in rows if r["pgr_by_method"][method]["n"]]
        out[method] = sum(means) / len(means) if means else float("nan")
    return out


def accuracy_of(row: dict, method: str) -> float:
    """The LLM's test accuracy with `method`'s update on a held-out key, averaged over its seeds."""
    got = [run["p_gt"] if method == "gt" else run["baselines"][method]["p"] for run in row["runs"]
           if method == "gt" or method in run["baselines"]]
    return sum(got) / len(got) if got else float("nan")


def print_accuracies(result: dict) -> None:
    """Test accuracy per held-out key (PGR divides by P_T - P_S, which is small on some keys)."""
    rows = [row for block in result["families"].values() for row in block["keys"]]
    methods = list(result["all"])
    print(f"\n{'held-out key':<22}{'base':>6}{'P_S':>6}{'P_T':>6}" + "".join(f"{m:>12}" for m in methods))
    widths = [6, 6, 6] + [12] * len(methods)

    def columns(row: dict) -> list[float]:
        return [row["p_base"]["mean"], row["p_s"]["mean"], row["p_t"]["mean"],
                *(accuracy_of(row, m) for m in methods)]

    for kind in ("interpolation", "extrapolation"):
        chosen = [columns(row) for row in rows if row["kind"] == kind]
        names = [row["task"] for row in rows if row["kind"] == kind]
        if chosen:
            means = [sum(col) / len(col) for col in zip(*chosen, strict=True)]
            for name, values in [*zip(names, chosen, strict=True), (f"mean, {len(chosen)} {kind[:6]}.", means)]:
                print(f"{name:<22}" + "".join(f"{v:>{w}.2f}" for v, w in zip(values, widths, strict=True)))


def similarities(args: argparse.Namespace, pair, scorer: Scorer, recipe, families: list[str],  # noqa: ANN001
                 keys: dict[str, list[int]], plans: dict) -> None:
    """For each held-out key: its upload against the family's other keys' shadow runs, as the reference of
    an upgrade's quality report places it (`relative` below the recipe's `relative_from`: flagged)."""
    from models.training.shadow import load_shadow

    threshold = upgrade_recipe(pair.id).quality.relative_from
    rows = []
    for family in families:
        # Beside each held-out key: every key's upload against runs of all the family's keys (a key it knows).
        whole = load_shadow(pair, [plans[f"{family}-{k}"] for k in keys[family]])
        known = build_reference(untrained_gt(whole, recipe.gt), whole)
        for key in keys[family]:
            run = cached_private_run(pair, scorer, f"{family}-{key}", recipe.tiny, recipe.llm, 0)
            seen = known.compare(run.tiny_tokens)
            rows.append({"task": f"{family}-{key}", "seed": 0, "kind": "known",
                         "flagged": seen["relative"] < threshold, **seen})
        for key in keys[family]:
            held = f"{family}-{key}"
            data = whole.select(torch.tensor([task != held for task in whole.task]))
            reference = build_reference(untrained_gt(data, recipe.gt), data)
            for seed in range(args.seeds):
                run = cached_private_run(pair, scorer, held, recipe.tiny, recipe.llm, seed)
                seen = reference.compare(run.tiny_tokens)
                rows.append({"task": held, "seed": seed, "kind": "held out", "flagged": seen["relative"] < threshold,
                             **seen})
                print(f"{held:<12} seed {seed}: relative {seen['relative']:.2f} (nearest {seen['nearest_task']}, "
                      f"margin {seen['margin']:.2f}) -> {'flagged' if rows[-1]['flagged'] else 'looks known'}")
    summary = {}
    for kind in ("known", "held out"):
        mine = [r for r in rows if r["kind"] == kind]
        summary[kind] = {"uploads": len(mine), "flagged": sum(r["flagged"] for r in mine),
                         "relative": sorted(r["relative"] for r in mine), "margin": sorted(r["margin"] for r in mine)}
        print(f"\n{kind}: {summary[kind]['flagged']} of {len(mine)} flagged (relative < {threshold}); relative "
              f"{min(summary[kind]['relative']):.2f}-{max(summary[kind]['relative']):.2f}, margin "
              f"{min(summary[kind]['margin']):.2f}-{max(summary[kind]['margin']):.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pair": pair.id, "relative_from": threshold, "rows": rows, "summary": summary},
                                   indent=2, sort_keys=True))
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("unseen.json"))
    parser.add_argument("--families", nargs="*", default=None, help="families to hold keys out of (default: "
                        f"every family of the pair with at least {MIN_KEYS} keys)")
    parser.add_argument("--runs", type=int, default=8, help="shadow runs per key")
    parser.add_argument("--seeds", type=int, default=1, help="private draws per held-out key")
    parser.add_argument("--first-seed", type=int, default=0, help="the first private draw (a later run adds draws "
                        "to an earlier one's keys through --merge)")
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--chunk", type=int, default=8, help="shadow runs per training loop (the toy results used 8; "
                        "smol's recipe: 4)")
    parser.add_argument("--no-distill", action="store_true")
    parser.add_argument("--prompts", choices=("public", "own"), default="public",
                        help="what distillation labels: the pair's public prompts and the held-out family's (the "
                        "task not given), or the family's alone (as if the organization attached its prompts)")
    parser.add_argument("--bound", action="store_true", help="also the best update the span of the other keys' "
                        "shadow LLM updates holds (`span_bound`: it reads the LLM's own update, so it bounds every "
                        "map whose output stays in that span: the mean, ridge, the nearest run, a routed start)")
    parser.add_argument("--keys", type=int, nargs="+", default=None,
                        help="hold out only these keys (two processes can share a family; join them with --merge)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="join results of runs that differ only in --keys or their draws into --out, and stop")
    parser.add_argument("--show", type=Path, default=None, help="print the tables of a results file and stop")
    parser.add_argument("--similarity-only", action="store_true",
                        help="only how each held-out key's upload compares with the shadow runs the GT would read "
                        "(what an upgrade's quality verdict judges a GT's update by): seconds, no GT trained")
    args = parser.parse_args()
    if args.show is not None:
        print_accuracies(json.loads(args.show.read_text()))
        return
    if args.merge:
        finish(merge([json.loads(path.read_text()) for path in args.merge]), args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    timings: dict = {}

    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe = recipe_for(pair)
    families = families_of(pair, args.families)
    keys = {f: list(FAMILIES[f].keys) for f in families}
    plans = {f"{f}-{k}": replace(recipe.plan(f"{f}-{k}"), subsets=args.runs) for f in families for k in keys[f]}
    start = time.perf_counter()
    build_shadow(pair, list(plans.values()), workers=args.workers, chunk=args.chunk)
    timings["shadow_build"] = time.perf_counter() - start

    scorer = Scorer(pair)
    if args.similarity_only:
        similarities(args, pair, scorer, recipe, families, keys, plans)
        return
    distill_cfg = None if args.no_distill else upgrade_recipe(pair.id).distill
    cfg = recipe.gt
    result: dict = {"pair": pair.id, "families": {}, "timings_s": timings,
                    "config": {"runs_per_key": args.runs, "seeds": args.seeds, "first_seed": args.first_seed,
                               "gt": asdict(cfg), "bound": args.bound,
                               "distill": asdict(distill_cfg) if distill_cfg else None, "prompts": args.prompts}}
    own = args.prompts == "own"
    for family in families:
        pooled = None if distill_cfg is None else Distiller(distill_prompts(pair, [family] if own else families, own),
                                                            distill_cfg)
        rows = []
        for key in [k for k in keys[family] if args.keys is None or k in args.keys]:
            held = f"{family}-{key}"
            gt_id, seen = without(family, key)
            model, data = fit(pair, [plans[t] for t in seen], None, gt_id, cfg, timings)
            private = [cached_private_run(pair, scorer, held, recipe.tiny, recipe.llm, s)
                       for s in range(args.first_seed, args.first_seed + args.seeds)]
            kind = "interpolation" if min(keys[family]) < key < max(keys[family]) else "extrapolation"
            row = key_row(held, kind, score_runs(private, scorer, model, data, cfg, pooled, bound=args.bound))
            rows.append(row)
            log.info("%s held out (%s): GT %.1f%%, distill %.1f%%, gt+distill %.1f%%", held, row["kind"],
                     100 * row["pgr_by_method"]["gt"]["mean"], 100 * row["pgr_by_method"]["distill"]["mean"],
                     100 * row["pgr_by_method"]["gt+distill"]["mean"])
        result["families"][family] = {"keys": rows}
    finish(result, args.out)


def finish(result: dict, out: Path) -> None:
    """Each family's table and the averages over interpolated and extrapolated keys: printed, and written."""
    everything = []
    for family, block in result["families"].items():
        rows = block["keys"]
        table = setting(family, [r for row in rows for r in row["runs"]])
        print_table(f"C, {family} (one key held out at a time)", table)
        block["average_by_method"] = table["average_by_method"]
        everything += rows
    for kind in ("interpolation", "extrapolation"):
        result[kind] = summarise([r for r in everything if r["kind"] == kind])
    result["all"] = summarise(everything)
    print_accuracies(result)
    methods = list(result["all"])
    print(f"\n{'held-out keys':<16}" + "".join(f"{m:>12}" for m in methods))
    for kind in ("interpolation", "extrapolation", "all"):
        print(f"{kind:<16}" + "".join(f"{result[kind].get(m, float('nan')):>12.1%}" for m in methods))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {out}")


def key_row(task: str, kind: str, runs: list[dict]) -> dict:
    """A held-out key's row: its runs (one per private draw) and each method's mean and spread over them."""
    return {**setting(task, runs)["tasks"][0], "kind": kind, "runs": runs}


SEED_KEYS = ("seeds", "first_seed")


def comparable(config: dict) -> dict:
    """What runs to be merged must share: all but their draws (results written before --prompts labelled the
    public pool)."""
    return {"prompts": "public", **{k: v for k, v in config.items() if k not in SEED_KEYS}}


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same pair and config over different held-out keys (`--keys`) or private draws
    (`--first-seed`): a key's runs from every part are joined and its means and spreads taken again."""
    if len({json.dumps([p["pair"], comparable(p["config"])], sort_keys=True) for p in parts}) != 1:
        raise SystemExit("these results differ in pair or config; merge runs of one command that differ in --keys "
                         "or --first-seed")
    runs: dict[str, dict[str, list[dict]]] = {}
    kinds: dict[str, str] = {}
    for part in parts:
        for family, block in part["families"].items():
            for row in block["keys"]:
                runs.setdefault(family, {}).setdefault(row["task"], []).extend(row["runs"])
                kinds[row["task"]] = row["kind"]
    draws = [(run["task"], run["seed"]) for by_task in runs.values() for mine in by_task.values() for run in mine]
    if len(set(draws)) != len(draws):
        raise SystemExit("a held-out key's draw appears in two results; merge runs with different --first-seed")
    timings: dict = {}
    for part in parts:
        for name, value in part["timings_s"].items():
            timings[name] = timings.get(name, [] if isinstance(value, list) else 0) + value
    seeds = sorted({seed for _, seed in draws})
    order = {f: list(FAMILIES[f].keys) for f in runs}
    return {"pair": parts[0]["pair"], "config": {**comparable(parts[0]["config"]), "seeds": len(seeds),
                                                 "first_seed": seeds[0]}, "timings_s": timings,
            "families": {f: {"keys": [key_row(task, kinds[task], sorted(mine, key=lambda r: r["seed"]))
                                      for task, mine in sorted(by_task.items(), key=lambda item:
                                                               order[f].index(int(item[0].rsplit("-", 1)[1])))]}
                         for f, by_task in runs.items()}}


if __name__ == "__main__":
    main()
