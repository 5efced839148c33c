"""Distillation without the organization's data: its TinyLM (the uploaded adapter on the pair's TinyLM)
answers prompts greedily, and the LLM's LoRA is fine-tuned on those answers with the pair's recipe.

The prompts are the organization's own question format when it attaches them, else the provider's public
prompts; the private data never leaves the organization. This is the weak-to-strong family the paper
compares against, and the recipe of data-free adapter transfer; here it is also the way to upgrade a task
no Gradient Transformer was trained on. The LLM run may start from a generated update (`start`) instead of
the pair's init, so a GT's output can be refined by a short distillation.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from models.data.datafile import Conversation, Prompt
from models.data.evaluate import answers
from models.data.tasks import Example
from models.errors import ConfigError
from models.lora.update import Update, add, merge_into
from models.pairs import Pair
from models.training.finetune import FinetuneConfig, FinetuneResult, OnStep, finetune_lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    finetune: FinetuneConfig  # the LLM's fine-tune on the teacher's answers (the pair's recipe)
    prompts: int = 1000  # at most this many prompts are labelled, drawn from those given
    max_new_tokens: int = 32  # the teacher's longest answer
    seed: int = 0
    restarts: int = 1  # an upgrade's fine-tunes from each start, seeded apart; the probe check picks one
    average_tail: float = 0.0  # deliver each fine-tune's update averaged over this last share of its steps (0: the
    # last step's)

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.max_new_tokens < 1 or self.restarts < 1 or not 0 <= self.average_tail <= 1:
            raise ConfigError(f"invalid distillation settings: {self}")

    @property
    def average_last(self) -> int:
        """How many of the fine-tune's last steps its delivered update averages over (0: the last step's)."""
        return round(self.average_tail * self.finetune.steps)


@dataclass
class DistillResult:
    update: Update  # the LLM update, relative to the pair's LLM init (a `start` included)
    labelled: int  # prompts the teacher answered (an empty answer teaches nothing: dropped)
    teacher_seconds: float
    train_seconds: float


def teacher_model(pair: Pair, tiny_update: Update, device: torch.device | str = "cpu") -> PreTrainedModel:
    """The organization's fine-tuned TinyLM: the pair's TinyLM with its update merged in."""
    init = pair.init("tiny")
    model = pair.load_model("tiny", device)
    return merge_into(model, add(init, tiny_update), pair.spec.lora.scale)


def fits(pair: Pair, side: str, prompts: list[Prompt], room: int) -> list[Prompt]:
    """The prompts whose tokens leave `room` new tokens in the model's context (the rest are dropped)."""
    from models.data.textdata import encode_prompts

    tokenizer = pair.load_tokenizer(side)
    limit = int(getattr(pair.load_config(side), "max_position_embeddings", 2048)) - room
    return [p for p in prompts if encode_prompts(tokenizer, [p])["input_ids"].shape[1] <= limit]


def label(pair: Pair, tiny_update: Update, prompts: list[Prompt], max_new_tokens: int,
          device: torch.device | str = "cpu") -> list[Example | Conversation]:
    """The teacher's greedy answers as training examples (prompts it answers with nothing are dropped)."""
    teacher = teacher_model(pair, tiny_update, device)
    got = answers(teacher, pair.load_tokenizer("tiny"), prompts, max_new_tokens)
    examples: list[Example | Conversation] = []
    for prompt, answer in zip(prompts, got, strict=True):
        if answer:
            examples.append(replace(prompt, answer=answer) if isinstance(prompt, Conversation)
                            else Example(prompt, answer))
    return examples


def teacher_examples(pair: Pair, tiny_update: Update, prompts: list[Prompt], cfg: DistillConfig,
                     device: torch.device | str = "cpu") -> list[Example | Conversation]:
    """The teacher's answers to a seeded draw of at most cfg.prompts of `prompts` (those that fit its context)."""
    drawn = random.Random(cfg.seed).sample(prompts, min(cfg.prompts, len(prompts)))
    chosen = fits(pair, "tiny", drawn, cfg.max_new_tokens)
    if not chosen:
        raise ConfigError("no prompt fits the TinyLM's context; nothing to distill from")
    examples = label(pair, tiny_update, chosen, cfg.max_new_tokens, device)
    if not examples:
        raise ConfigError("the TinyLM answered every prompt with nothing; nothing to distill from")
    return examples


def distill(pair: Pair, tiny_update: Update, prompts: list[Prompt], cfg: DistillConfig,
            start: Update | None = None, on_step: OnStep | None = None,
            device: torch.device | str = "cpu") -> DistillResult:
    """An LLM update learned from the teacher's answers to (a seeded draw of at most cfg.prompts of) `prompts`."""
    started = time.perf_counter()
    examples = teacher_examples(pair, tiny_update, prompts, cfg, device)
    teacher_s = time.perf_counter() - started
    started = time.perf_counter()
    update = learn(pair, examples, cfg.finetune, start, on_step, device, cfg.average_last)
    train_s = time.perf_counter() - started
    log.info("distilled %d teacher answers into the LLM (%.1fs labelling, %.1fs training)", len(examples),
             teacher_s, train_s)
    return DistillResult(update, len(examples), teacher_s, train_s)


def learn(pair: Pair, examples: list[Example | Conversation], cfg: FinetuneConfig, start: Update | None = None,
          on_step: OnStep | None = None, device: torch.device | str = "cpu", average_last: int = 0) -> Update:
    """The LLM's LoRA fine-tuned on the teacher's answers from the pair's init (or from `start`, a generated
    update): the update relative to the init, `start` included, after the last step or, with `average_last`,
    averaged over the last that many steps (LoRA factors, along the one run, as a running mean)."""
    update = _learn(pair, examples, replace(cfg, keep_last=0), start, on_step, device, average_last).update
    return update if start is None else add(start, update)


def learn_steps(pair: Pair, examples: list[Example | Conversation], cfg: FinetuneConfig,
                start: Update | None = None, on_step: OnStep | None = None,
                device: torch.device | str = "cpu") -> list[Update]:
    """As `learn`, the update after each of the last `cfg.keep_last` steps, oldest first (after the last step
    alone where that is 0)."""
    result = _learn(pair, examples, cfg, start, on_step, device)
    return [u if start is None else add(start, u) for u in result.snapshots or [result.update]]


def _learn(pair: Pair, examples: list[Example | Conversation], cfg: FinetuneConfig, start: Update | None,
           on_step: OnStep | None, device: torch.device | str, average_last: int = 0) -> FinetuneResult:
    llm_init = pair.init("llm")
    begin = llm_init if start is None else add(llm_init, start)
    model = pair.load_model("llm", device)
    return finetune_lora(model, pair.load_tokenizer("llm"), begin, pair.spec.lora, examples, cfg, on_step,
                         average_last=average_last)
