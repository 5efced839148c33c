"""Setting C: does the span of a family's other keys' shadow LLM updates hold a held-out key's update, and can
the organization's TinyLM find it there?

`bench.unseen` shows every map from the TinyLM update (GT, ridge, mean, nearest) leaving the LLM at 0% on most
held-out keys. Two causes are possible: no combination of the shadow runs' LLM updates teaches the key (the
data cannot), or one does and the maps cannot find it from the upload. Per held-out key this scores:

- `bound_all` / `bound_last`: the LLM's own update on the private data projected onto the affine span of the
  other keys' shadow LLM updates, every kept snapshot of every run / each run's last one (`span_bound`: it
  reads the answer, so it is an upper bound for every map whose output stays in the span);
- `random_all` / `random_last`: the same projection onto as many random directions of the same spread (how
  much a span of that size holds by chance alone);
- `span_distill`: distillation restricted to the span: the LLM's update is the mean plus a combination of the
  span's `--rank` principal directions, and only those coefficients are fitted to the organization's TinyLM's
  answers on the pair's public prompts (no private data; the same prompts and recipe as `distill`);
- `distill`: plain distillation (the LLM's LoRA, all of it), as in `bench.quality`; `distill_span`: its update
  projected onto the span (what of it the shadow runs' directions hold; no private data read).

    python -m bench.span --pair toy --family rotate --out bench/results/span-toy.json
    python -m bench.span --pair smol --family pick --keys 1 3 --train-keys 2 4 --chunk 4 \
        --out bench/results/span-smol.json

Builds what is missing (pair, shadow runs of every key of the family, private runs), prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.func import functional_call

from bench.experiment import Distiller, PrivateRun, Scorer, cached_private_run, span_bound
from models.data.evaluate import cosine
from models.data.tasks import FAMILIES, Example
from models.data.textdata import encode_batch
from models.gt.baselines import mean_update
from models.lora.update import LoraLayout, add, module_deltas
from models.pairs import ensure_pair
from models.recipes import recipe_for, upgrade_recipe
from models.training.distill import DistillConfig, teacher_examples
from models.training.finetune import batch_order
from models.training.shadow import ShadowSet, build_shadow, load_shadow
from models.upgrade.checks import public_prompts

log = logging.getLogger("bench.span")


def last_snapshots(data: ShadowSet) -> ShadowSet:
    """Each run's last kept snapshot (its update); runs keep equally many snapshots, in step order."""
    per_run = len(data.task) // len(set(data.run.tolist()))
    return data.select(torch.tensor([i % per_run == per_run - 1 for i in range(len(data.task))]))


def random_like(data: ShadowSet, gen: torch.Generator) -> ShadowSet:
    """As many random LLM updates as `data` holds, around its mean with its spread: a span of the same size."""
    noise = torch.randn(data.tgt.shape, generator=gen) * data.tgt.std()
    return ShadowSet(data.src, data.tgt.mean(0) + noise - noise.mean(0), data.run, data.task)


def principal(data: ShadowSet, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shadow LLM updates' mean [d] and their first `rank` principal directions [k, d], each scaled to one
    spread of the runs along it (so a coefficient of 1 is a typical run's departure)."""
    flat = data.tgt.flatten(1)
    mean = flat.mean(0)
    _, s, vt = torch.linalg.svd(flat - mean, full_matrices=False)
    return mean, vt[:rank] * (s[:rank, None] / len(flat) ** 0.5)


def span_distill(scorer: Scorer, examples: list[Example], mean: torch.Tensor, basis: torch.Tensor,
                 cfg: DistillConfig, lr: float) -> tuple[torch.Tensor, list[float]]:
    """The LLM update mean + c @ basis [L_T, D_T] with c fitted to `examples` (the teacher's answers) by Adam
    with the distillation recipe's steps and batches; the update and the losses per step."""
    pair, layout = scorer.pair, scorer.layout
    model = pair.load_model("llm").train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.named_parameters())
    coef = torch.zeros(len(basis), requires_grad=True)
    opt = torch.optim.Adam([coef], lr=lr)
    shape = (layout.num_layers, layout.token_dim)

    def weights() -> dict[str, torch.Tensor]:
        lora = add(scorer.init, layout.from_tokens((mean + coef @ basis).reshape(shape)))
        return {name: params[name] + delta for name, delta in module_deltas(lora, pair.spec.lora.scale).items()}

    order, losses = batch_order(len(examples), cfg.finetune.batch_size, cfg.seed), []
    for _ in range(cfg.finetune.steps):
        batch = encode_batch(scorer.tokenizer, [examples[i] for i in next(order)])
        loss = functional_call(model, weights(), args=(), kwargs=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return (mean + coef.detach() @ basis).reshape(shape), losses


def key_row(scorer: Scorer, run: PrivateRun, data: ShadowSet, distiller: Distiller, rank: int, lr: float,
            gen: torch.Generator) -> dict:
    """Accuracy and cosine to the LLM's own update of every column, for one held-out key."""
    pair, last = scorer.pair, last_snapshots(data)
    mean, basis = principal(data, rank)
    start = time.perf_counter()
    own = replace(distiller.cfg, seed=distiller.cfg.seed + run.seed)  # as `distill` seeds a private draw's
    tiny = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).from_tokens(run.tiny_tokens)
    spanned, losses = span_distill(scorer, teacher_examples(pair, tiny, distiller.prompts, own), mean, basis, own, lr)
    span_seconds = time.perf_counter() - start
    plain, plain_seconds = distiller.tokens(scorer, run)
    candidates = {
        "mean": mean_update(data),
        "bound_all": span_bound(data, run.llm_tokens),
        "bound_last": span_bound(last, run.llm_tokens),
        "random_all": span_bound(random_like(data, gen), run.llm_tokens),
        "random_last": span_bound(random_like(last, gen), run.llm_tokens),
        "span_distill": spanned,
        "distill": plain,
        "distill_span": span_bound(data, plain),
    }
    row = {"task": run.task, "p_base": run.p_base, "p_s": run.p_s, "p_t": run.p_t, "directions": len(data.task) - 1,
           "directions_last": len(last.task) - 1, "span_distill_loss": [losses[0], losses[-1]],
           "seconds": {"span_distill": span_seconds, "distill": plain_seconds}}
    for name, tokens in candidates.items():
        row[name] = {"p": scorer.llm_accuracy(tokens, run.test), "cos": cosine(tokens, run.llm_tokens)}
    return row


COLUMNS = ("mean", "bound_all", "random_all", "bound_last", "random_last", "span_distill", "distill",
           "distill_span")


def print_table(result: dict) -> None:
    print(f"\n{'held-out key':<14}{'P_S':>6}{'P_T':>6}" + "".join(f"{c:>14}" for c in COLUMNS))
    for row in result["keys"]:
        print(f"{row['task']:<14}{row['p_s']:>6.2f}{row['p_t']:>6.2f}"
              + "".join(f"{row[c]['p']:>8.2f} {row[c]['cos']:>5.2f}" for c in COLUMNS))
    n = len(result["keys"])
    print(f"{'mean':<26}" + "".join(f"{sum(r[c]['p'] for r in result['keys']) / n:>8.2f} "
                                    f"{sum(r[c]['cos'] for r in result['keys']) / n:>5.2f}" for c in COLUMNS))
    print("each column: the LLM's test accuracy with that update, and its cosine to the LLM's own update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("span.json"))
    parser.add_argument("--family", default="rotate")
    parser.add_argument("--keys", type=int, nargs="+", default=None, help="keys to hold out (default: every key)")
    parser.add_argument("--train-keys", type=int, nargs="+", default=None,
                        help="keys whose shadow runs make the span (default: the family's keys but the held-out one)")
    parser.add_argument("--runs", type=int, default=8, help="shadow runs per key (as bench.unseen)")
    parser.add_argument("--seed", type=int, default=0, help="the private draw")
    parser.add_argument("--rank", type=int, default=64, help="principal directions span_distill fits")
    parser.add_argument("--lr", type=float, default=0.05, help="span_distill's Adam rate on the coefficients")
    parser.add_argument("--workers", type=int, default=2, help="processes for shadow runs")
    parser.add_argument("--chunk", type=int, default=8, help="shadow runs per training loop (the toy results used 8)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    pair = ensure_pair(args.data_dir / "pairs", args.pair)
    recipe, cfg = recipe_for(pair), upgrade_recipe(pair.id).distill
    if args.family not in FAMILIES:
        parser.error(f"unknown family {args.family!r}; known: {', '.join(FAMILIES)}")
    keys = list(FAMILIES[args.family].keys)
    held, train = args.keys or keys, args.train_keys or keys
    if unknown := sorted(set(held + train) - set(keys)):
        parser.error(f"not keys of {args.family}: {unknown}; its keys: {keys}")
    if any(set(train) <= {key} for key in held):
        parser.error("every held-out key needs another key's shadow runs to span: give more --train-keys")
    plans = {k: replace(recipe.plan(f"{args.family}-{k}"), subsets=args.runs) for k in train}
    build_shadow(pair, list(plans.values()), workers=args.workers, chunk=args.chunk)
    scorer, gen = Scorer(pair), torch.Generator().manual_seed(0)
    distiller = Distiller(public_prompts(pair, None)[0], cfg, from_gt=False)  # every task's prompts, as in C
    result: dict = {"pair": pair.id, "family": args.family, "train_keys": train, "runs_per_key": args.runs,
                    "seed": args.seed, "rank": args.rank, "lr": args.lr, "keys": []}
    for key in held:
        data = load_shadow(pair, [plans[k] for k in train if k != key])
        run = cached_private_run(pair, scorer, f"{args.family}-{key}", recipe.tiny, recipe.llm, args.seed)
        result["keys"].append(key_row(scorer, run, data, distiller, args.rank, args.lr, gen))
        log.info("%s: %s", run.task, {c: round(result["keys"][-1][c]["p"], 2) for c in COLUMNS})
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
