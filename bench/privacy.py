"""Quality of upgrades when organizations protect their TinyLM update, the paper's two ways.

    python -m bench.privacy --pair toy --out bench/results/privacy-toy.json
    python -m bench.privacy --pair toy --out ... --export-gts data/pairs/toy/gts   # ship the matched GTs

For every task of the pair and every protection (none, i.e. epsilon = inf; DP-SGD at epsilon 8, 1 and
0.1; Gaussian output noise at the same epsilons), the organization fine-tunes the TinyLM on the task's
private half with that protection, and the update is lifted by

- the plain GT: the pair-wide GT (task not given, as the service runs it) trained on plain shadow runs;
- the matched GT: the same, trained on shadow runs whose TinyLM side had the same protection (the paper's
  GTs for DP clients). The LLM side of those runs is the plain runs', unchanged.

PGR uses the unprotected P_S and P_T (bench.quality's), so what protection costs shows as a lower PGR.
Beside them: the protected TinyLM's own accuracy, and the mean update, ridge and nearest shadow pair of
the matched shadow set. Output noise clips the update at the median norm of the plain shadow TinyLM
updates, so clipping alone changes little and the noise is what the epsilon buys.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.experiment import PrivateRun, Scorer, cached_private_run, finetune_side
from bench.quality import fit
from models.data.evaluate import accuracy, cosine, pgr
from models.data.tasks import get_task, make_splits
from models.gt.baselines import Ridge, mean_update, nearest
from models.lora.privacy import DPConfig, UpdateNoise
from models.lora.update import LoraLayout, add, merge_into
from models.pairs import Pair, ensure_pair
from models.recipes import Recipe, recipe_for
from models.training.shadow import build_shadow

log = logging.getLogger("bench.privacy")

EPSILONS = (8.0, 1.0, 0.1)
PRIVATE_SEED = 987_654_321  # seeded for a reproducible table; no shadow run uses this noise seed


def protections(clip: float) -> list[tuple[str, float, dict]]:
    """(mechanism, epsilon, plan settings): none first, then DP-SGD and output noise at each epsilon."""
    out = [("none", math.inf, {})]
    out += [("dp_sgd", e, {"dp": DPConfig(e)}) for e in EPSILONS]
    out += [("update_noise", e, {"update_noise": UpdateNoise("gaussian", e, clip)}) for e in EPSILONS]
    return out


def protected_update(pair: Pair, run: PrivateRun, recipe: Recipe, settings: dict
                     ) -> tuple[torch.Tensor, float, dict]:
    """The organization's protected TinyLM update as tokens, its TinyLM's test accuracy, and accounting
    (unprotected: the plain private run's own)."""
    if not settings:
        return run.tiny_tokens, run.p_s, {}
    splits = make_splits(get_task(run.task), seed=pair.spec.seed)
    dp = replace(settings["dp"], seed=PRIVATE_SEED) if "dp" in settings else None
    update, model, _ = finetune_side(pair, "tiny", splits.private, recipe.tiny, dp=dp)
    info = {"dp_sgd": dp.describe()} if dp else {}
    if "update_noise" in settings:
        noise = replace(settings["update_noise"], seed=PRIVATE_SEED)
        update = noise.apply(update)
        model = pair.load_model("tiny")
        merge_into(model, add(pair.init("tiny"), update), pair.spec.lora.scale)
        info = {"update_noise": noise.describe()}
    tokens = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).to_tokens(update)
    return tokens, accuracy(model, pair.load_tokenizer("tiny"), splits.test), info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("privacy.json"))
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--export-gts", type=Path, help="save each matched GT here as all@<mechanism>-eps<e> "
                        "(a pair's gts/ folder: upgrades of uploads with that privacy then use it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # see bench.quality
    start = time.perf_counter()
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe = recipe_for(pair)
    tasks = list(pair.spec.tasks)
    plain_plans = [recipe.plan(t) for t in tasks]
    build_shadow(pair, plain_plans, workers=args.workers)  # first: the private plans reuse their LLM runs
    scorer = Scorer(pair)
    plain = {t: cached_private_run(pair, scorer, t, recipe.tiny, recipe.llm) for t in tasks}
    timings: dict = {}
    plain_gt, plain_data = fit(pair, plain_plans, None, "all", recipe.gt, timings)
    clip = float(plain_data.src.flatten(1).norm(dim=1).median())  # median norm of the plain TinyLM updates

    rows = []
    for mechanism, epsilon, settings in protections(clip):
        plans = [replace(p, **settings) for p in plain_plans]
        build_shadow(pair, plans, workers=args.workers)
        export = args.export_gts / f"all@{mechanism.replace('_', '-')}-eps{epsilon:g}" if args.export_gts else None
        matched_gt, data = (plain_gt, plain_data) if not settings else \
            fit(pair, plans, export, "all", recipe.gt, timings)
        ridge = Ridge(data)
        for task in tasks:
            run = plain[task]
            tokens, p_private_tiny, info = protected_update(pair, run, recipe, settings)
            candidates = {"plain_gt": plain_gt.generate(tokens[None])[0],
                          "matched_gt": matched_gt.generate(tokens[None])[0],
                          "ridge": ridge.predict(tokens), "mean_update": mean_update(data),
                          "nearest": nearest(data, tokens)}
            row = {"mechanism": mechanism, "epsilon": epsilon, "task": task, "n_test": len(run.test),
                   "p_base": run.p_base, "p_s": run.p_s, "p_t": run.p_t, "p_private_tiny": p_private_tiny,
                   **info}
            for name, llm_tokens in candidates.items():
                p = scorer.llm_accuracy(llm_tokens, run.test)
                row[name] = {"p": p, "pgr": pgr(p, run.p_s, run.p_t), "cos": cosine(llm_tokens, run.llm_tokens)}
            rows.append(row)
            log.info("%s eps=%s %s: plain GT %.2f, matched GT %.2f", mechanism, epsilon, task,
                     row["plain_gt"]["p"], row["matched_gt"]["p"])
    summary = summarise(rows)
    print_table(summary)
    result = {"pair": pair.id, "update_noise_clip": clip, "private_seed": PRIVATE_SEED, "rows": rows,
              "summary": summary, "seconds": time.perf_counter() - start,
              "config": {"finetune": asdict(recipe.tiny), "llm_finetune": asdict(recipe.llm),
                         "shadow_k": recipe.shadow_k, "subset_size": recipe.subset_size,
                         "keep_last": recipe.keep_last, "gt": asdict(recipe.gt)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")


METHODS = ("plain_gt", "matched_gt", "ridge", "mean_update", "nearest")


def summarise(rows: list[dict]) -> list[dict]:
    """Average PGR over tasks per (mechanism, epsilon), and the protected TinyLM's mean accuracy."""
    out = []
    for key in dict.fromkeys((r["mechanism"], r["epsilon"]) for r in rows):
        group = [r for r in rows if (r["mechanism"], r["epsilon"]) == key]
        entry = {"mechanism": key[0], "epsilon": key[1],
                 "p_private_tiny": sum(r["p_private_tiny"] for r in group) / len(group)}
        for m in METHODS:
            finite = [r[m]["pgr"] for r in group if r[m]["pgr"] == r[m]["pgr"]]
            entry[m] = sum(finite) / len(finite) if finite else float("nan")
        out.append(entry)
    return out


def print_table(summary: list[dict]) -> None:
    print(f"\n{'protection':<14}{'eps':>6}{'TinyLM':>8}" + "".join(f"{m:>13}" for m in METHODS))
    print(f"{'':<14}{'':>6}{'acc':>8}" + "".join(f"{'avg PGR':>13}" for _ in METHODS))
    for e in summary:
        print(f"{e['mechanism']:<14}{e['epsilon']:>6g}{e['p_private_tiny']:>8.2f}"
              + "".join(f"{e[m]:>13.1%}" for m in METHODS))


if __name__ == "__main__":
    main()
