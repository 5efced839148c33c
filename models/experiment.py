"""What the quality benchmark measures for one task: private fine-tunes, generated updates, baselines.

Kept in models/ (not bench/) so tests can check a sample of published results with the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from models.baselines import Ridge, mean_update, nearest
from models.evaluate import accuracy, cosine, pgr, r2_vs_mean
from models.finetune import FinetuneConfig, finetune_lora
from models.grad_transformer import GradientTransformer
from models.pairs import Pair
from models.shadow import ShadowSet
from models.tasks import Example, get_task, make_splits
from models.update import LoraLayout, Update, add, merge_into


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


class Scorer:
    """Accuracy of the pair's LLM under a given update, on one task's test set."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self.init = pair.init("llm")
        self.layout = LoraLayout(self.init, pair.spec.lora.targets)
        self.tokenizer = pair.load_tokenizer("llm")

    def llm_accuracy(self, tokens: torch.Tensor | None, test: list[Example]) -> float:
        model = self.pair.load_model("llm")
        if tokens is not None:
            merge_into(model, add(self.init, self.layout.from_tokens(tokens)), self.pair.spec.lora.scale)
        return accuracy(model, self.tokenizer, test)


def finetune_side(pair: Pair, side: str, examples: list[Example], cfg: FinetuneConfig
                  ) -> tuple[Update, PreTrainedModel, float]:
    """Fine-tune one model of the pair on `examples`: its update, the model with it merged, seconds."""
    model, init = pair.load_model(side), pair.init(side)
    start = time.perf_counter()
    result = finetune_lora(model, pair.load_tokenizer(side), init, pair.spec.lora, examples, cfg)
    seconds = time.perf_counter() - start
    merge_into(model, add(init, result.update), pair.spec.lora.scale)
    return result.update, model, seconds


def private_run(pair: Pair, scorer: Scorer, task: str, cfg: FinetuneConfig) -> PrivateRun:
    splits = make_splits(get_task(task), seed=pair.spec.seed)
    tokens, scores, seconds = {}, {}, {}
    for side in ("tiny", "llm"):
        update, model, seconds[side] = finetune_side(pair, side, splits.private, cfg)
        tokens[side] = LoraLayout(pair.init(side), pair.spec.lora.targets).to_tokens(update)
        scores[side] = accuracy(model, pair.load_tokenizer(side), splits.test)
    return PrivateRun(task, splits.test, tokens["tiny"], tokens["llm"], scorer.llm_accuracy(None, splits.test),
                      scores["tiny"], scores["llm"], seconds["llm"])


def score_task(run: PrivateRun, scorer: Scorer, gt: GradientTransformer, shadow: ShadowSet,
               ridge: Ridge) -> dict:
    """One row of the quality table: the GT beside ridge, mean update and nearest shadow pair."""
    mean = mean_update(shadow)
    candidates = {
        "gt": gt.generate(run.tiny_tokens[None])[0],
        "ridge": ridge.predict(run.tiny_tokens),
        "mean_update": mean,
        "nearest": nearest(shadow, run.tiny_tokens),
    }
    rows = {}
    for name, tokens in candidates.items():
        p = scorer.llm_accuracy(tokens, run.test)
        rows[name] = {"p": p, "pgr": pgr(p, run.p_s, run.p_t), "cos": cosine(tokens, run.llm_tokens),
                      "r2_vs_mean": r2_vs_mean(tokens, run.llm_tokens, mean)}
    gt_row = rows.pop("gt")
    return {"task": run.task, "n_test": len(run.test), "p_base": run.p_base, "p_s": run.p_s, "p_t": run.p_t,
            "p_gt": gt_row["p"], "pgr": gt_row["pgr"], "cos": gt_row["cos"], "r2_vs_mean": gt_row["r2_vs_mean"],
            "baselines": rows}
