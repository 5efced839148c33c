"""Scoring: exact-match accuracy, the performance gap recovered, and how close an update is to the truth."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.data.datafile import Prompt
from models.data.tasks import Example
from models.data.textdata import encode_prompts


@torch.no_grad()
def answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
            max_new_tokens: int, batch_size: int = 250) -> list[str]:
    """Greedy answers (plain prompts or conversations), batched with left padding; the model runs where it is."""
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, prompts[i:i + batch_size]).items()}
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = gen[:, batch["input_ids"].shape[1]:]
        out += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return out


def answer_budget(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> int:
    """New tokens the scorer allows: the longest expected answer and two more."""
    return max(len(tokenizer(ex.answer, add_special_tokens=False)["input_ids"]) for ex in examples) + 2


def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example],
             batch_size: int = 250) -> float:
    """Share of examples whose greedy answer equals the expected one exactly."""
    got = answers(model, tokenizer, [ex.prompt for ex in examples], answer_budget(tokenizer, examples), batch_size)
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
