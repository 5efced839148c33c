"""Shadow runs per hour: each run fine-tuned alone (one PEFT run after another, as shadow builds ran before)
against runs trained together in one loop (`models.training.multirun.finetune_many`), side by side.

    python -m bench.shadow --pair toy --runs 32 --out bench/results/shadow-toy.json
    python -m bench.shadow --pair smol --runs 4 --steps 10 --out bench/results/shadow-smol.json

A run pair is one shadow run: the TinyLM and the LLM fine-tuned on the same subset of a task's public
examples with the pair's recipe (`--steps` shortens both; the ratio is per step). The runs go in chunks
(`--chunk`, the recipe's runs per loop, as a build's chunks), and on each chunk the two ways take turns, on
the same models, subsets and seeds; the table gives run pairs per hour of each (by wall clock and by the
process's CPU time, which other processes on the machine disturb less) and their ratio, and each way's mean
last-step loss (the batched runs learn what the lone ones learn: with dropout
off they are equal, tests/models/test_multirun.py).

`--threads` (default 1) sets torch's threads for both ways. On 2 cores shared with other processes, 2
threads made each lone run's step 5-15x slower than 1 thread (a small model's operations wait on a thread
that is not running), which flatters the batched way; 1 thread per process is how shadow builds run
(`build_shadow` workers, one Celery training worker per core).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from models.data.tasks import subset
from models.pairs import Pair, ensure_pair
from models.pairs.tasks import task_splits
from models.recipes import provider_recipe, recipe_for
from models.training.finetune import FinetuneConfig, finetune_lora
from models.training.multirun import finetune_many
from models.training.shadow import ShadowPlan, run_seed


def side_config(plan: ShadowPlan, side: str, steps: int | None) -> FinetuneConfig:
    cfg = replace(plan.side_finetune(side), keep_last=plan.keep_last)
    return replace(cfg, steps=steps, keep_last=min(cfg.keep_last, steps)) if steps else cfg


def alone(pair: Pair, plan: ShadowPlan, datasets: list[list], first: int, steps: int | None) -> list[float]:
    """Every run pair one PEFT fine-tune after another; each run's last-step LLM loss."""
    losses = []
    for index, data in enumerate(datasets, start=first):
        for side in ("tiny", "llm"):
            model, tok, init = _models(pair, side)
            cfg = replace(side_config(plan, side, steps), seed=run_seed(plan, index))
            result = finetune_lora(model, tok, init, pair.spec.lora, data, cfg)
            if side == "llm":
                losses.append(result.losses[-1])
    return losses


def batched(pair: Pair, plan: ShadowPlan, datasets: list[list], first: int, steps: int | None) -> list[float]:
    """Each model's runs in one loop; each run's last-step LLM loss."""
    seeds = [run_seed(plan, i) for i in range(first, first + len(datasets))]
    for side in ("tiny", "llm"):
        model, tok, init = _models(pair, side)
        results = finetune_many(model, tok, init, pair.spec.lora, datasets, side_config(plan, side, steps), seeds)
    return [r.losses[-1] for r in results]


_LOADED: dict[str, tuple] = {}


def _models(pair: Pair, side: str) -> tuple:
    if side not in _LOADED:
        _LOADED[side] = (pair.load_model(side), pair.load_tokenizer(side), pair.init(side))
    return _LOADED[side]


WAYS = {"alone": alone, "batched": batched}


def measure(pair: Pair, plan: ShadowPlan, datasets: list[list], chunk: int, steps: int | None) -> dict:
    """Wall and CPU seconds of each way, chunk by chunk, the ways taking turns (the first alternates)."""
    totals = {name: {"wall_s": 0.0, "cpu_s": 0.0, "losses": []} for name in WAYS}
    for n, first in enumerate(range(0, len(datasets), chunk)):
        part = datasets[first:first + chunk]
        for name in (list(WAYS) if n % 2 == 0 else list(reversed(WAYS))):
            wall, cpu = time.perf_counter(), time.process_time()
            totals[name]["losses"] += WAYS[name](pair, plan, part, first, steps)
            totals[name]["wall_s"] += time.perf_counter() - wall
            totals[name]["cpu_s"] += time.process_time() - cpu
            print(f"runs {first}-{first + len(part) - 1}: {name:<8} wall {totals[name]['wall_s']:.1f} s so far",
                  flush=True)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--pairs-dir", type=Path, default=Path("data/pairs"))
    parser.add_argument("--task", help="default: the pair's first task")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--chunk", type=int, help="runs per loop, as a build's chunk (default: the recipe's)")
    parser.add_argument("--steps", type=int, help="fine-tune steps per run (default: the pair's recipe)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both ways (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pair = ensure_pair(args.pairs_dir, args.pair)
    task = args.task or pair.spec.tasks[0]
    plan = recipe_for(pair).plan(task)
    chunk = args.chunk or provider_recipe(pair.id).batch_runs
    public = task_splits(pair, task).public
    datasets = [subset(public, plan.subset_size, plan.seed, i) for i in range(args.runs)]
    totals = measure(pair, plan, datasets, chunk, args.steps)
    result = {"pair": pair.id, "task": task, "runs": args.runs, "chunk": chunk, "threads": torch.get_num_threads(),
              "steps": {side: side_config(plan, side, args.steps).steps for side in ("tiny", "llm")},
              "batch_size": plan.finetune.batch_size, "subset_size": plan.subset_size,
              "machine": platform.processor() or platform.machine()}
    print(f"\n{'way':<10}{'run pairs/hour':>16}{'(CPU time)':>12}{'wall s':>9}{'mean last LLM loss':>20}")
    for name, t in totals.items():
        t["run_pairs_per_hour"] = 3600 * args.runs / t["wall_s"]
        t["run_pairs_per_cpu_hour"] = 3600 * args.runs / t["cpu_s"]
        t["mean_last_llm_loss"] = sum(t.pop("losses")) / args.runs
        print(f"{name:<10}{t['run_pairs_per_hour']:>16.0f}{t['run_pairs_per_cpu_hour']:>12.0f}{t['wall_s']:>9.1f}"
              f"{t['mean_last_llm_loss']:>20.4f}")
    result |= {"ways": totals, "ratio": totals["batched"]["run_pairs_per_hour"] / totals["alone"]["run_pairs_per_hour"],
               "ratio_cpu": totals["batched"]["run_pairs_per_cpu_hour"] / totals["alone"]["run_pairs_per_cpu_hour"]}
    print(f"batched / alone: {result['ratio']:.2f}x wall, {result['ratio_cpu']:.2f}x CPU time")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
