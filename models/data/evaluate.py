"""Scoring: exact-match accuracy or ROUGE-1 (a task's metric), the performance gap recovered, and how close
an update is to the truth."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.data.datafile import Prompt, TrainingExample
from models.data.tasks import Example
from models.data.textdata import encode_prompts

METRICS = ("exact", "rouge1")


@torch.no_grad()
def answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            prompts: list[Prompt] | list[TrainingExample], max_new_tokens: int, batch_size: int = 250) -> list[str]:
    """Greedy answers to plain prompts, task examples or conversations (every turn before the reply), batched
    with left padding; the model runs where it is."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, prompts[i:i + batch_size]).items()}
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = gen[:, batch["input_ids"].shape[1]:]
        out += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return out


def answer_budget(tokenizer: PreTrainedTokenizerBase, examples: list[TrainingExample]) -> int:
    """New tokens the scorer allows: the longest expected answer and two more."""
    return max(len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples) + 2


def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
             batch_size: int = 250) -> float:
    """Share of examples whose greedy answer equals the expected one exactly."""
    got = answers(model, tokenizer, [ex.prompt for ex in examples], answer_budget(tokenizer, examples), batch_size)
    return sum(g == ex.answer for g, ex in zip(got, examples, strict=True)) / len(examples)


def example_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[TrainingExample],
                    batch_size: int = 250) -> list[str]:
    """Greedy answers to task examples or conversations, with the scorer's answer budget."""
    return answers(model, tokenizer, examples, answer_budget(tokenizer, examples), batch_size)


def rouge1(got: list[str], want: list[str]) -> float:
    """Mean ROUGE-1 F1 of answers against references (the `rouge-score` package's tokenizer and scorer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"])
    return sum(scorer.score(w, g)["rouge1"].fmeasure for g, w in zip(got, want, strict=True)) / len(want)


def task_score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[TrainingExample],
               metric: str, batch_size: int = 250) -> float:
    """The model's score on examples by a task's metric: exact-match accuracy or mean ROUGE-1 F1."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    got = example_answers(model, tokenizer, examples, batch_size)
    if metric == "rouge1":
        return rouge1(got, [ex.answer for ex in examples])
    return sum(g == ex.answer for g, ex in zip(got, examples, strict=True)) / len(examples)


def pgr(p_method: float, p_s: float, p_t: float) -> float:
    """Performance gap recovered, (P_method - P_S) / (P_T - P_S); not clipped."""
    if p_t == p_s:
        return float("nan")
    return (p_method - p_s) / (p_t - p_s)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def r2_vs_mean(generated: torch.Tensor, true: torch.Tensor, mean: torch.Tensor) -> float:
    """1 - |generated - true|^2 / |mean - true|^2: above 0 only where the map beats the mean update."""
    return 1.0 - float((generated - true).double().pow(2).sum() / (mean - true).double().pow(2).sum())
