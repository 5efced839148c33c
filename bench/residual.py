"""Is a task's LLM update predictable beyond the task's mean? What a GT could learn past its start.

Within one task, shadow runs differ by their subset of public examples and their seed (data order, dropout),
and a run's TinyLM and LLM share both. If those shared draws left a trace that the TinyLM's update carries,
a map from the TinyLM update's departure from the task's mean to the LLM update's departure would beat the
mean; that is the only thing a trained GT can add on a task whose mean it starts from (setting A, and B
once routed). This measures it with the maps that have the best chance on few runs, per task:

- leave one shadow run out: the task's mean of the other runs, kernel ridge on the other runs (the `Ridge`
  baseline, its strength chosen by an inner leave-one-out, so it may choose to predict the mean), and the
  nearest other run (the `nearest` baseline);
- the organization's private runs (`--seeds` draws): the same maps fitted on every shadow run;
- how alike runs' departures are on both sides: over pairs of runs, the correlation between the cosine of
  their TinyLM departures and the cosine of their LLM departures, with a permutation p-value; and the same
  for single steps' changes (the last snapshots), pairs within one run apart from pairs across two.

`--lora-dropout 0` measures the same on a variant of the pair without LoRA dropout: the two models draw their
dropout masks apart (their shapes differ), the one draw of a run that the sides never share.

R² is against the mean (1 - squared error of the map / of the mean, pooled over held-out runs): above 0 only
where the map beats the mean. Each run's last snapshot is its update.

    python -m bench.residual --pair toy --out bench/results/residual-toy.json
    python -m bench.residual --pair smol --tasks pick-2 omit-1 --runs 24 --out bench/results/residual-smol.json
    python -m bench.residual --pair smol --runs 16 --seeds 0 --chunk 4 --out bench/results/residual-smol-16.json
    python -m bench.residual --pair toy --lora-dropout 0 --tasks rotate-6 separate-2 \
        --out bench/results/residual-toy-no-dropout.json

Builds what is missing (pair, the recipe's shadow runs, private runs), prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.experiment import Scorer, cached_private_run
from bench.quality import spread
from models.gt.baselines import Ridge, mean_update, nearest
from models.pairs import Pair, ensure_pair
from models.recipes import recipe_for
from models.training.shadow import ShadowSet, build_shadow, load_shadow

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e6)  # ridge strengths, relative to the kernel's mean diagonal
MAPS = ("ridge", "nearest")


def standardise(x: torch.Tensor) -> torch.Tensor:
    """x [n, d] centred and scaled per coordinate, as the ridge baseline reads its inputs."""
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)


def hat(k: torch.Tensor, lam: float) -> torch.Tensor:
    """Kernel ridge with an unpenalised intercept as a linear smoother: fitted y = H y. `k` is the kernel of
    centred inputs; `lam` is relative to its mean diagonal (as `Ridge`'s alpha)."""
    n = len(k)
    ridge = k + lam * k.diagonal().mean().clamp_min(1e-12) * torch.eye(n, dtype=k.dtype)
    return torch.full((n, n), 1 / n, dtype=k.dtype) + k @ torch.linalg.inv(ridge)


def choose_lambda(x: torch.Tensor, y: torch.Tensor) -> float:
    """The ridge strength of the least leave-one-out error on these runs alone (exact for a linear smoother:
    each residual over 1 - H_ii); through y y^T, so the outputs' size never enters."""
    xs, yc = standardise(x), y - y.mean(0)
    k, gram = xs @ xs.T, yc @ yc.T
    errors = {}
    for lam in LAMBDAS:
        h = hat(k, lam)
        r = h - torch.eye(len(k), dtype=k.dtype)
        errors[lam] = float(((r @ gram @ r.T).diagonal() / (1 - h.diagonal()) ** 2).sum())
    return min(errors, key=errors.get)


def predict(x: torch.Tensor, y: torch.Tensor, query: torch.Tensor, lam: float | None = None
            ) -> tuple[dict[str, torch.Tensor], float]:
    """The mean, ridge's and the nearest run's prediction for `query` [d] (models/gt/baselines.py), from
    training runs x [n, d], y [n, k]; and the ridge strength (chosen on the training runs unless given)."""
    data = ShadowSet(x, y, torch.arange(len(x)), [""] * len(x))
    lam = choose_lambda(x, y) if lam is None else lam
    return {"mean": mean_update(data), "ridge": Ridge(data, alpha=lam).predict(query),
            "nearest": nearest(data, query)}, lam


def r2_against_mean(errors: dict[str, list[float]]) -> dict[str, float]:
    base = sum(errors["mean"])
    return {m: 1 - sum(errors[m]) / base for m in MAPS}


def cosines(v: torch.Tensor) -> torch.Tensor:
    """Every pair of rows' cosine [n, n]."""
    unit = torch.nn.functional.normalize(v, dim=1)
    return unit @ unit.T


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def alike(x: torch.Tensor, y: torch.Tensor, permutations: int = 500, seed: int = 0) -> dict[str, float]:
    """Over pairs of runs: correlation of TinyLM-departure cosines with LLM-departure cosines, and the
    share of run permutations (of the LLM side) that correlate at least as much."""
    cx, cy = cosines(standardise(x)), cosines(y - y.mean(0))
    i, j = torch.triu_indices(len(x), len(x), 1)
    observed = correlation(cx[i, j], cy[i, j])
    gen = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(permutations):
        order = torch.randperm(len(x), generator=gen)
        null.append(correlation(cx[i, j], cy[order[i], order[j]]))
    return {"r": observed, "p": (1 + sum(v >= observed for v in null)) / (1 + permutations)}


def alike_steps(src: torch.Tensor, tgt: torch.Tensor) -> dict[str, float]:
    """The same likeness for single steps: src, tgt [runs, snapshots, d]; each step's change of the update
    (centred over every step), over pairs of steps of one run and pairs from two runs apart."""
    def changes(t: torch.Tensor) -> torch.Tensor:
        d = t[:, 1:] - t[:, :-1]
        return (d - d.mean((0, 1))).flatten(0, 1)

    cx, cy = cosines(changes(src)), cosines(changes(tgt))
    run = torch.arange(len(src)).repeat_interleave(src.shape[1] - 1)
    i, j = torch.triu_indices(len(run), len(run), 1)
    same = run[i] == run[j]
    return {name: correlation(cx[i, j][m], cy[i, j][m]) for name, m in (("same_run", same), ("other_runs", ~same))}


def task_rows(x: torch.Tensor, y: torch.Tensor, private: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """One task's figures: leave-one-run-out and private R² against the mean, the chosen ridge strengths.
    x, y [runs, d], [runs, k]: each run's update."""
    n = len(x)
    errors: dict[str, list[float]] = {m: [] for m in ("mean", *MAPS)}
    lams = []
    for i in range(n):
        rest = torch.arange(n) != i
        preds, lam = predict(x[rest], y[rest], x[i])
        lams.append(lam)
        for method, pred in preds.items():
            errors[method].append(float(((pred - y[i]) ** 2).sum()))
    private_r2, lam_all = [], None
    for px, py in private:
        preds, lam_all = predict(x, y, px, lam_all)
        private_r2.append(r2_against_mean({m: [float(((p - py) ** 2).sum())] for m, p in preds.items()}))
    return {"runs": n, "held_out_runs": r2_against_mean(errors),
            "private": {m: spread([r[m] for r in private_r2]) for m in MAPS} if private else None,
            "lambda_chosen": {"held_out_runs": sorted(set(lams)), "all_runs": lam_all},
            "alike": alike(x, y)}


def print_table(result: dict) -> None:
    head = f"{'task':<14}{'runs':>5}{'ridge LOO':>11}{'nearest LOO':>13}{'ridge private':>15}" \
           f"{'nearest private':>17}{'alike r':>9}{'p':>7}{'steps: one run':>16}{'two runs':>10}"
    print(head)
    for task, row in result["tasks"].items():
        loo, priv = row["held_out_runs"], row["private"]
        private = (f"{priv['ridge']['mean']:>15.3f}{priv['nearest']['mean']:>17.3f}" if priv
                   else f"{'–':>15}{'–':>17}")
        print(f"{task:<14}{row['runs']:>5}{loo['ridge']:>11.3f}{loo['nearest']:>13.3f}{private}"
              f"{row['alike']['r']:>9.3f}{row['alike']['p']:>7.3f}"
              f"{row['alike_steps']['same_run']:>16.3f}{row['alike_steps']['other_runs']:>10.3f}")
    print("R² against the task's mean update (above 0: the map beats the mean); private: mean over draws;\n"
          "alike: correlation of TinyLM-side with LLM-side cosines over pairs of runs (p: permutations), and\n"
          "over pairs of single steps' changes, within one run and across two")


def lora_variant(pair: Pair, dropout: float, root: Path) -> Pair:
    """The pair with another LoRA dropout, under `root`: its models and inits linked, its own shadow runs and
    private runs (the organization's TinyLM fine-tune uses the pair's LoRA settings too)."""
    folder = root / pair.id
    if not (folder / "pair.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tiny", "llm", "tiny_lora_init.safetensors", "llm_lora_init.safetensors"):
            if not (folder / name).exists():
                (folder / name).symlink_to((pair.root / name).resolve())
        spec = json.loads((pair.root / "pair.json").read_text())
        spec["lora"]["dropout"] = dropout
        (folder / "pair.json.tmp").write_text(json.dumps(spec, indent=2, sort_keys=True))
        (folder / "pair.json.tmp").replace(folder / "pair.json")
    return Pair(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("residual.json"))
    parser.add_argument("--runs", type=int, default=None, help="shadow runs per task (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=3, help="private draws per task (0: shadow runs only)")
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--chunk", type=int, default=8, help="shadow runs per training loop (smol's recipe: 4)")
    parser.add_argument("--tasks", nargs="+", default=None, help="the pair's tasks to measure (default: all)")
    parser.add_argument("--lora-dropout", type=float, default=None,
                        help="a variant of the pair with this LoRA dropout (its own shadow and private runs, "
                        "under <data-dir>/pairs-lora-dropout-D)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    start = time.perf_counter()
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    if args.lora_dropout is not None:
        pair = lora_variant(pair, args.lora_dropout, args.data_dir / f"pairs-lora-dropout-{args.lora_dropout:g}")
    recipe = recipe_for(pair)
    runs = args.runs or recipe.shadow_k
    unknown = sorted(set(args.tasks or ()) - set(pair.spec.tasks))
    if unknown:
        parser.error(f"not tasks of the {pair.id} pair: {unknown}; its tasks: {', '.join(pair.spec.tasks)}")
    plans = {t: replace(recipe.plan(t), subsets=runs) for t in args.tasks or pair.spec.tasks}
    build_shadow(pair, list(plans.values()), workers=args.workers, chunk=args.chunk)
    scorer = Scorer(pair)
    result: dict = {"pair": pair.id, "lora_dropout": pair.spec.lora.dropout, "runs": runs, "seeds": args.seeds,
                    "lambdas": list(LAMBDAS), "tasks": {}}
    for task, plan in plans.items():
        shadow = load_shadow(pair, [plan])
        # [runs, snapshots, d]: every run keeps the same number of snapshots, in step order
        src = shadow.src.view(runs, -1, *shadow.src.shape[1:]).flatten(2).double()
        tgt = shadow.tgt.view(runs, -1, *shadow.tgt.shape[1:]).flatten(2).double()
        private = []
        for seed in range(args.seeds):
            run = cached_private_run(pair, scorer, task, recipe.tiny, recipe.llm, seed)
            private.append((run.tiny_tokens.flatten().double(), run.llm_tokens.flatten().double()))
        result["tasks"][task] = {**task_rows(src[:, -1], tgt[:, -1], private),
                                 "alike_steps": alike_steps(src, tgt)}
        logging.info("%s: %s", task, json.dumps(result["tasks"][task]["held_out_runs"]))
    result["seconds"] = time.perf_counter() - start
    print_table(result)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
