"""Distillation's length and restarts, on the held-out keys bench.unseen uses: how much of the gap the LLM
fine-tuned on the organization's TinyLM's answers recovers as it learns from more of them (`--steps`), and
whether restarts with other seeds, chosen between by the upgrade's own probe check (exact agreement with the
TinyLM on probe prompts), do better than one run; with `--average-last`, whether a run's update averaged over
its last n steps (LoRA factors, the same run) does better than its last step's.

    python -m bench.distill --pair smol --steps 40 120 --restarts 2 --keys 1 2 3 --out a.json  # beside 4 5 6
    python -m bench.distill --pair smol --steps 120 --restarts 1 --average-last 30 60 --out b.json
    python -m bench.distill --merge a.json b.json --out bench/results/distill-smol.json

The prompts are split as an upgrade splits the organization's attached ones (`own`: the family's public prompts
stand in for its question format; `public`: every task's of the pair): probes for the check, the rest labelled
once per upload by the TinyLM; every variant learns from the same labels, from the pair's init. Restart r seeds
the LLM's fine-tune with the recipe's seed plus r (restart 0 is what an upgrade runs today). Every variant is
the last step's update or an explicit average (`120~60`), whatever the pair's `average_tail`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.experiment import Scorer, cached_private_run
from bench.quality import spread
from bench.unseen import distill_prompts, families_of
from models.data.evaluate import accuracy, answers, pgr
from models.data.tasks import FAMILIES
from models.lora.update import LoraLayout, mean
from models.pairs import ensure_pair
from models.recipes import recipe_for, upgrade_recipe
from models.training.distill import learn_steps, teacher_examples
from models.upgrade.checks import agreement, base_answers, llm_budget, split_prompts, teacher_answers, usable

log = logging.getLogger("bench.distill")
PICKS = ("first", "chosen", "mean", "best")  # restart 0; the probe check's pick; all restarts' mean; the oracle


def key_draw(pair, scorer: Scorer, recipe, task: str, seed: int, pool: list, steps: list[int],  # noqa: ANN001
             restarts: int, averages: list[int] = ()) -> dict:
    """One held-out key and private draw: every (steps, restart, average_last) variant's test accuracy, PGR
    and probe agreement with the TinyLM; each run is scored after its last step (average_last 0) and as the
    mean of its last n steps' updates for each n in `averages`."""
    cfg = upgrade_recipe(pair.id)
    run = cached_private_run(pair, scorer, task, recipe.tiny, recipe.llm, seed)
    tiny = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).from_tokens(run.tiny_tokens)
    probes, train = split_prompts(pool, cfg.quality.probes)
    probes = usable(pair, probes)
    taught = teacher_answers(pair, tiny, probes)
    budget = llm_budget(pair, taught)
    base_rate = agreement(taught, base_answers(pair, probes, budget))[0]
    started = time.perf_counter()
    examples = teacher_examples(pair, tiny, train, replace(cfg.distill, seed=cfg.distill.seed + seed))
    teacher_s = time.perf_counter() - started
    variants = []
    for n in steps:
        for restart in range(restarts):
            finetune = replace(cfg.distill.finetune, steps=n, seed=cfg.distill.finetune.seed + restart)
            started = time.perf_counter()
            fits = [a for a in averages if a <= n]  # a run averages over at most all of its steps
            updates = learn_steps(pair, examples, replace(finetune, keep_last=max([0, *fits])))
            train_s = time.perf_counter() - started
            for average in [0, *fits]:
                model = scorer.llm_model(scorer.layout.to_tokens(mean(updates[-(average or 1):])))
                p = accuracy(model, scorer.tokenizer, run.test)
                rate = agreement(taught, answers(model, scorer.tokenizer, probes, budget))[0]
                variants.append({"steps": n, "restart": restart, "average_last": average, "p": p,
                                 "pgr": pgr(p, run.p_s, run.p_t), "probe_rate": rate, "train_s": round(train_s, 1)})
                log.info("%s draw %d, %d steps, restart %d, mean of the last %d: accuracy %.2f, probe agreement "
                         "%.2f (%.0fs)", task, seed, n, restart, average or 1, p, rate, train_s)
    return {"task": task, "seed": seed, "n_test": len(run.test), "p_base": run.p_base, "p_s": run.p_s,
            "p_t": run.p_t, "probes": len(probes), "base_probe_rate": base_rate, "labelled": len(examples),
            "teacher_s": round(teacher_s, 1), "variants": variants}


def picks(variants: list[dict]) -> dict[str, dict]:
    """One key-draw's variants of one length, as each way of choosing between restarts would deliver them."""
    chosen = max(variants, key=lambda v: v["probe_rate"])  # the first on a tie: restart 0
    best = max(variants, key=lambda v: v["p"])
    mean = {k: sum(v[k] for v in variants) / len(variants) for k in ("p", "pgr")}
    return {"first": variants[0], "chosen": chosen, "mean": mean, "best": best}


def variant_name(v: dict) -> str:
    """A variant's length, and the steps it averages over where it does: "120", "120~40"."""
    return f"{v['steps']}" + (f"~{v['average_last']}" if v.get("average_last") else "")


def summarise(rows: list[dict]) -> dict:
    """Per length (and averaging) and pick: the average accuracy and PGR over key-draws, and each key-draw's
    values."""
    out = {}
    order = sorted({(v["steps"], v.get("average_last", 0)) for row in rows for v in row["variants"]})
    for n in dict.fromkeys(variant_name({"steps": steps, "average_last": average}) for steps, average in order):
        by_pick = {name: {"p": [], "pgr": []} for name in PICKS}
        for row in rows:
            for name, got in picks([v for v in row["variants"] if variant_name(v) == n]).items():
                by_pick[name]["p"].append(got["p"])
                by_pick[name]["pgr"].append(got["pgr"])
        out[n] = {name: {"p": spread(v["p"]), "pgr": spread(v["pgr"]), "p_each": v["p"], "pgr_each": v["pgr"]}
                  for name, v in by_pick.items()}
        if "~" in n:
            out[n]["against_last"] = paired(out[n.split("~")[0]]["first"], out[n]["first"])
    return out


def paired(last: dict, averaged: dict) -> dict:
    """An averaged variant against the same runs' last steps (restart 0), key-draw by key-draw: on how many it
    tests better and worse, and the mean accuracy difference with its standard error."""
    diffs = [b - a for a, b in zip(last["p_each"], averaged["p_each"], strict=True)]
    got = spread(diffs)  # std over n; the standard error is the sample's (over n - 1) divided by sqrt(n)
    se = got["std"] / (got["n"] - 1) ** 0.5 if got["n"] > 1 else float("nan")
    return {"better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs), "n": got["n"],
            "p_diff": got["mean"], "p_diff_se": se}


def print_summary(result: dict) -> None:
    rows = result["rows"]
    names = [f"{variant_name(v)} r{v['restart']}" for v in rows[0]["variants"]]
    print(f"\n{'key, draw':<14}{'P_S':>6}{'P_T':>6}" + "".join(f"{name:>16}" for name in names))
    for row in rows:
        cells = "".join(f"{v['p']:>9.2f} ({v['probe_rate']:.2f})" for v in row["variants"])
        print(f"{row['task'] + ', ' + str(row['seed']):<14}{row['p_s']:>6.2f}{row['p_t']:>6.2f}{cells}")
    print("(test accuracy, and in brackets the probe check's agreement with the TinyLM)")
    print(f"\n{'steps':<8}" + "".join(f"{name + ' PGR':>18}" for name in PICKS) + f"{'chosen acc.':>14}")
    for n, by_pick in result["summary"].items():
        cells = "".join(f"{by_pick[name]['pgr']['mean']:>10.1%} ±{by_pick[name]['pgr']['std']:>5.1%}"
                        for name in PICKS)
        print(f"{n:<8}{cells}{by_pick['chosen']['p']['mean']:>14.2f}")
    print(f"({len(rows)} key-draws; ± is the spread over key-draws, not over seeds; 120~40: a 120-step run's "
          "update averaged over its last 40 steps)")
    compared = {n: s["against_last"] for n, s in result["summary"].items() if "against_last" in s}
    if compared:
        print(f"\n{'averaged':<10}{'better':>8}{'worse':>7}{'accuracy gain':>16}{'(se)':>8}   (restart 0, against "
              "the same run's last step)")
        for n, got in compared.items():
            print(f"{n:<10}{got['better']:>5}/{got['n']:<2}{got['worse']:>7}{got['p_diff']:>+16.3f}"
                  f"{got['p_diff_se']:>8.3f}")


def finish(result: dict, out: Path) -> None:
    result["summary"] = summarise(result["rows"])
    print_summary(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {out}")


def merge(parts: list[dict]) -> dict:
    """One result from runs of one config over different keys or draws."""
    if len({json.dumps([p["pair"], {k: v for k, v in p["config"].items() if k != "keys"}], sort_keys=True)
            for p in parts}) != 1:
        raise SystemExit("these results differ in pair or config; merge runs that differ in --keys or --first-seed")
    rows = [row for part in parts for row in part["rows"]]
    if len({(r["task"], r["seed"]) for r in rows}) != len(rows):
        raise SystemExit("a key-draw appears in two results")
    config = {**parts[0]["config"], "keys": sorted({k for p in parts for k in p["config"]["keys"]})}
    return {"pair": parts[0]["pair"], "config": config, "rows": sorted(rows, key=lambda r: (r["task"], r["seed"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="smol")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("distill.json"))
    parser.add_argument("--families", nargs="*", default=None, help="families whose keys are held out "
                        "(default: bench.unseen's)")
    parser.add_argument("--keys", type=int, nargs="+", default=None, help="only these keys")
    parser.add_argument("--prompts", choices=("own", "public"), default="own")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="the LLM fine-tune's lengths to try (default: the recipe's)")
    parser.add_argument("--restarts", type=int, default=2, help="fine-tune seeds per length")
    parser.add_argument("--average-last", type=int, nargs="*", default=[],
                        help="also score each run's update averaged over its last N steps, for each N")
    parser.add_argument("--seeds", type=int, default=1, help="private draws per key")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--merge", type=Path, nargs="+", default=None)
    args = parser.parse_args()
    if args.merge:
        finish(merge([json.loads(path.read_text()) for path in args.merge]), args.out)
        return
    if args.restarts < 1:
        parser.error("--restarts takes at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # two processes side by side on 2 cores
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe = recipe_for(pair)
    distill_cfg = upgrade_recipe(pair.id).distill
    steps = args.steps or [distill_cfg.finetune.steps]
    scorer = Scorer(pair)
    families = families_of(pair, args.families)
    rows: list[dict] = []

    def result() -> dict:
        keys = sorted({int(r["task"].rsplit("-", 1)[1]) for r in rows})
        return {"pair": pair.id, "rows": rows,
                "config": {"families": families, "keys": keys, "prompts": args.prompts, "steps": steps,
                           "restarts": args.restarts, "average_last": args.average_last,
                           "distill": asdict(distill_cfg),
                           "probes": rows[0]["probes"]}}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    for family in families:
        pool = distill_prompts(pair, [family] if args.prompts == "own" else families, args.prompts == "own")
        for key in [k for k in FAMILIES[family].keys if args.keys is None or k in args.keys]:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                rows.append(key_draw(pair, scorer, recipe, f"{family}-{key}", seed, pool, steps, args.restarts,
                                     args.average_last))
                args.out.write_text(json.dumps(result(), indent=2, sort_keys=True))  # a stopped run keeps its rows
    finish(result(), args.out)


if __name__ == "__main__":
    main()
