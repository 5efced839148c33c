"""Shadow runs per hour: each run fine-tuned alone (one PEFT run after another, as shadow builds ran before)
against runs trained together in one loop (`models.training.multirun.finetune_many`), side by side.

    python -m bench.shadow --pair toy --runs 32 --out bench/results/shadow-toy.json
    python -m bench.shadow --pair smol --runs 4 --steps 10 --out bench/results/shadow-smol.json

A run pair is one shadow run: the TinyLM and the LLM fine-tuned on the same subset of a task's public
examples with the pair's recipe (`--steps` shortens both; the ratio is per step). The two ways take turns
(`--rounds`), on the same models, subsets and seeds; the table gives run pairs per hour of each and their
ratio, and each way's mean last-step loss (the batched runs learn what the lone ones learn: with dropout
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
from models.recipes import recipe_for
from models.training.finetune import FinetuneConfig, finetune_lora
from models.training.multirun import finetune_many
from models.training.shadow import ShadowPlan, run_seed


def side_config(plan: ShadowPlan, side: str, steps: int | None) -> FinetuneConfig:
    cfg = replace(plan.side_finetune(side), keep_last=plan.keep_last)
    return replace(cfg, steps=steps, keep_last=min(cfg.keep_last, steps)) if steps else cfg


def alone(pair: Pair, plan: ShadowPlan, datasets: list[list], steps: int | None) -> tuple[float, float]:
    """Seconds for every run pair, one PEFT fine-tune after another; the mean last-step LLM loss."""
    models = {side: (pair.load_model(side), pair.load_tokenizer(side), pair.init(side)) for side in ("tiny", "llm")}
    losses = []
    start = time.perf_counter()
    for index, data in enumerate(datasets):
        for side, (model, tok, init) in models.items():
            cfg = replace(side_config(plan, side, steps), seed=run_seed(plan, index))
            result = finetune_lora(model, tok, init, pair.spec.lora, data, cfg)
            if side == "llm":
                losses.append(result.losses[-1])
    return time.perf_counter() - start, sum(losses) / len(losses)


def batched(pair: Pair, plan: ShadowPlan, datasets: list[list], steps: int | None) -> tuple[float, float]:
    """Seconds for every run pair, each model's runs in one loop; the mean last-step LLM loss."""
    models = {side: (pair.load_model(side), pair.load_tokenizer(side), pair.init(side)) for side in ("tiny", "llm")}
    seeds = [run_seed(plan, i) for i in range(len(datasets))]
    start = time.perf_counter()
    for side, (model, tok, init) in models.items():
        results = finetune_many(model, tok, init, pair.spec.lora, datasets, side_config(plan, side, steps), seeds)
    seconds = time.perf_counter() - start
    return seconds, sum(r.losses[-1] for r in results) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--pairs-dir", type=Path, default=Path("data/pairs"))
    parser.add_argument("--task", help="default: the pair's first task")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--steps", type=int, help="fine-tune steps per run (default: the pair's recipe)")
    parser.add_argument("--rounds", type=int, default=1, help="passes of each way, taking turns")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both ways (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    pair = ensure_pair(args.pairs_dir, args.pair)
    task = args.task or pair.spec.tasks[0]
    plan = recipe_for(pair).plan(task)
    public = task_splits(pair, task).public
    datasets = [subset(public, plan.subset_size, plan.seed, i) for i in range(args.runs)]
    ways = {"alone": alone, "batched": batched}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    loss: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name in (list(ways) if round_ % 2 == 0 else list(reversed(ways))):
            took, loss[name] = ways[name](pair, plan, datasets, args.steps)
            seconds[name].append(took)
            print(f"round {round_ + 1}: {name:<8} {args.runs} run pairs in {took:.1f} s", flush=True)
    per_hour = {name: 3600 * args.runs / (sum(s) / len(s)) for name, s in seconds.items()}
    ratio = per_hour["batched"] / per_hour["alone"]
    print(f"\n{'way':<10}{'run pairs/hour':>16}{'mean s':>10}{'last LLM loss':>15}")
    for name in ways:
        print(f"{name:<10}{per_hour[name]:>16.0f}{sum(seconds[name]) / len(seconds[name]):>10.1f}{loss[name]:>15.4f}")
    print(f"batched / alone: {ratio:.2f}x")
    if args.out:
        steps = {side: side_config(plan, side, args.steps).steps for side in ("tiny", "llm")}
        result = {"pair": pair.id, "task": task, "runs": args.runs, "steps": steps, "rounds": args.rounds,
                  "batch_size": plan.finetune.batch_size, "subset_size": plan.subset_size,
                  "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                  "seconds": seconds, "run_pairs_per_hour": per_hour, "ratio": ratio, "last_llm_loss": loss}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
