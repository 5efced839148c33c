"""What the quality benchmark measures for one task: private fine-tunes, generated updates, baselines.

The benchmarks use it, and so do the tests that re-derive published results from the shipped GTs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace

import torch
from transformers import PreTrainedModel

from models.data.datafile import Prompt
from models.data.evaluate import accuracy, answer_budget, answers, cosine, pgr, r2_vs_mean
from models.data.tasks import Example, Splits, get_task, make_splits
from models.gt.baselines import Ridge, mean_update, nearest
from models.gt.network import GradientTransformer
from models.lora.privacy import DPConfig
from models.lora.update import LoraLayout, Update, add, merge_into
from models.pairs import Pair
from models.training.distill import DistillConfig, distill
from models.training.finetune import FinetuneConfig, finetune_lora
from models.training.shadow import ShadowSet


@dataclass
class PrivateRun:
    """The organization's side of one task: both models fine-tuned on the private half."""

    task: str
    test: list[Example]
    tiny_tokens: torch.Tensor  # [L_S, D_S]
    llm_tokens: torch.Tensor  # [L_T, D_T], the ceiling's own update
    p_base: float
    p_s: float
    p_t: float
    llm_seconds: float
    seed: int = 0  # which private draw and fine-tune seeds (0: the task's own private split)


class Scorer:
    """Accuracy of the pair's LLM under a given update, on one task's test set."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self.init = pair.init("llm")
        self.layout = LoraLayout(self.init, pair.spec.lora.targets)
        self.tokenizer = pair.load_tokenizer("llm")

    def llm_model(self, tokens: torch.Tensor | None):
        """A fresh copy of the LLM with the update `tokens` merged in (none: the base model)."""
        model = self.pair.load_model("llm")
        if tokens is not None:
            merge_into(model, add(self.init, self.layout.from_tokens(tokens)), self.pair.spec.lora.scale)
        return model

    def llm_accuracy(self, tokens: torch.Tensor | None, test: list[Example]) -> float:
        return accuracy(self.llm_model(tokens), self.tokenizer, test)


def finetune_side(pair: Pair, side: str, examples: list[Example], cfg: FinetuneConfig,
                  dp: DPConfig | None = None) -> tuple[Update, PreTrainedModel, float]:
    """Fine-tune one model of the pair on `examples` (DP-SGD with `dp`): its update, the model with it
    merged, seconds."""
    model, init = pair.load_model(side), pair.init(side)
    start = time.perf_counter()
    result = finetune_lora(model, pair.load_tokenizer(side), init, pair.spec.lora, examples, cfg, dp=dp)
    seconds = time.perf_counter() - start
    merge_into(model, add(init, result.update), pair.spec.lora.scale)
    return result.update, model, seconds


def private_examples(pair: Pair, task: str, seed: int) -> tuple[Splits, list[Example]]:
    """The task's splits and the organization's private examples for `seed`: seed 0 is the private split
    itself; another seed draws as many new inputs of the family, none of them public or test inputs."""
    splits = make_splits(get_task(task), seed=pair.spec.seed)
    if seed == 0:
        return splits, splits.private
    taken = {ex.prompt for ex in splits.public + splits.test}
    other = make_splits(get_task(task), seed=pair.spec.seed + 7919 * seed)
    fresh = [ex for ex in other.public + other.private + other.test if ex.prompt not in taken]
    return splits, fresh[:len(splits.private)]


def private_run(pair: Pair, scorer: Scorer, task: str, cfg: FinetuneConfig,
                llm_cfg: FinetuneConfig | None = None, seed: int = 0) -> PrivateRun:
    """Both models fine-tuned on the task's private examples of `seed` (the LLM with `llm_cfg` when given),
    each fine-tune seeded with its config's seed plus `seed`."""
    splits, private = private_examples(pair, task, seed)
    tokens, scores, seconds = {}, {}, {}
    for side in ("tiny", "llm"):
        side_cfg = llm_cfg if side == "llm" and llm_cfg is not None else cfg
        side_cfg = replace(side_cfg, seed=side_cfg.seed + seed)
        update, model, seconds[side] = finetune_side(pair, side, private, side_cfg)
        tokens[side] = LoraLayout(pair.init(side), pair.spec.lora.targets).to_tokens(update)
        scores[side] = accuracy(model, pair.load_tokenizer(side), splits.test)
    return PrivateRun(task, splits.test, tokens["tiny"], tokens["llm"], scorer.llm_accuracy(None, splits.test),
                      scores["tiny"], scores["llm"], seconds["llm"], seed)


def cached_private_run(pair: Pair, scorer: Scorer, task: str, cfg: FinetuneConfig,
                       llm_cfg: FinetuneConfig | None = None, seed: int = 0) -> PrivateRun:
    """`private_run`, kept under the pair's bench/ folder: the runs are seeded, so a rerun of a benchmark
    (other GT settings) need not fine-tune the LLM again."""
    key = hashlib.sha256(json.dumps([asdict(cfg), asdict(llm_cfg) if llm_cfg else None]).encode()).hexdigest()
    path = pair.root / "bench" / f"private-{task}-{key[:10]}{f'-seed{seed}' if seed else ''}.pt"
    if path.is_file():
        return PrivateRun(**{**torch.load(path), "test": make_splits(get_task(task), seed=pair.spec.seed).test})
    run = private_run(pair, scorer, task, cfg, llm_cfg, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in asdict(run).items() if k != "test"}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return run


@dataclass(frozen=True)
class Distiller:
    """The data-free distillation baseline: the organization's TinyLM labels public prompts and the LLM is
    fine-tuned on its answers, from the pair's init (`distill`) and from the GT's update (`gt+distill`)."""

    prompts: list[Prompt]
    cfg: DistillConfig
    from_gt: bool = True  # also `gt+distill` (a second distillation per run)

    def tokens(self, scorer: Scorer, run: PrivateRun, start: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        pair = scorer.pair
        tiny = LoraLayout(pair.init("tiny"), pair.spec.lora.targets).from_tokens(run.tiny_tokens)
        begin = None if start is None else scorer.layout.from_tokens(start)
        result = distill(pair, tiny, self.prompts, replace(self.cfg, seed=self.cfg.seed + run.seed), start=begin)
        return scorer.layout.to_tokens(result.update), result.teacher_seconds + result.train_seconds


def span_bound(shadow: ShadowSet, target: torch.Tensor) -> torch.Tensor:
    """The update nearest to `target` [L_T, D_T] among all that the shadow LLM updates' affine span holds
    (every snapshot of every run): a least-squares projection. It reads the answer, so it is no method but a
    bound: the mean, ridge, the nearest run and a routed GT's start all lie in this span, so none of them comes
    closer to the LLM's own update than this does."""
    flat = shadow.tgt.flatten(1).double()
    mean = flat.mean(0)
    basis = (flat - mean).T  # [d, N]
    coef = torch.linalg.lstsq(basis, (target.flatten().double() - mean)[:, None], driver="gelsd").solution
    return (mean + (basis @ coef)[:, 0]).float().reshape(target.shape)


def score_task(run: PrivateRun, scorer: Scorer, gt: GradientTransformer, shadow: ShadowSet,
               ridge: Ridge, start: GradientTransformer | None = None, distiller: Distiller | None = None,
               others: dict[str, GradientTransformer] | None = None, bound: bool = False) -> dict:
    """One row of the quality table: the GT beside ridge, mean update and nearest shadow pair; with `start`,
    the GT's untrained start too (what training added); with `distiller`, distillation from the pair's init
    and from the GT's update (and their seconds); with `others`, GTs of other recipes (`gt:<name>`); with
    `bound`, the best update the shadow runs' span holds (`span_bound`, which reads the LLM's own update)."""
    mean = mean_update(shadow)
    gt_tokens = gt.generate(run.tiny_tokens[None])[0]
    candidates = {
        "gt": gt_tokens,
        "ridge": ridge.predict(run.tiny_tokens),
        "mean_update": mean,
        "nearest": nearest(shadow, run.tiny_tokens),
        **{f"gt:{name}": other.generate(run.tiny_tokens[None])[0] for name, other in (others or {}).items()},
    }
    if start is not None:
        candidates["gt_start"] = start.generate(run.tiny_tokens[None])[0]
    if bound:
        candidates["span_bound"] = span_bound(shadow, run.llm_tokens)
    seconds = {}
    if distiller is not None:
        candidates["distill"], seconds["distill"] = distiller.tokens(scorer, run)
        if distiller.from_gt:
            candidates["gt+distill"], seconds["gt+distill"] = distiller.tokens(scorer, run, gt_tokens)
    rows = {}
    for name, tokens in candidates.items():
        model = scorer.llm_model(tokens)
        p = accuracy(model, scorer.tokenizer, run.test)
        rows[name] = {"p": p, "pgr": pgr(p, run.p_s, run.p_t), "cos": cosine(tokens, run.llm_tokens),
                      "r2_vs_mean": r2_vs_mean(tokens, run.llm_tokens, mean)}
        if name in seconds:
            rows[name]["seconds"] = seconds[name]
        if name == "gt" and run.seed == 0:  # published so a test can re-derive them from the shipped GT
            rows[name]["sample"] = sample_answers(model, scorer.tokenizer, run.test)
    gt_row = rows.pop("gt")
    return {"task": run.task, "seed": run.seed, "n_test": len(run.test), "p_base": run.p_base, "p_s": run.p_s,
            "p_t": run.p_t, "p_gt": gt_row["p"], "pgr": gt_row["pgr"], "cos": gt_row["cos"],
            "r2_vs_mean": gt_row["r2_vs_mean"], "gt_sample": gt_row.get("sample"), "baselines": rows}


SAMPLE = 8  # test questions per task whose GT-upgraded answers the results file records


def sample_answers(model, tokenizer, test: list[Example], n: int = SAMPLE) -> list[dict]:
    """The first n test questions with the model's greedy answers (as the accuracy scorer decodes them)."""
    got = answers(model, tokenizer, [ex.prompt for ex in test[:n]], answer_budget(tokenizer, test))
    return [{"prompt": ex.prompt, "expected": ex.answer, "answer": a} for ex, a in zip(test[:n], got, strict=True)]
