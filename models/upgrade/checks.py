"""What is checked before a generated adapter is delivered: its structure (PEFT loads it onto the LLM, every
target module matched, every layer non-zero, probe logits move) and its behaviour (on probe prompts, how
often the upgraded LLM answers as the organization's own TinyLM does, beside the base LLM's rate).

Probe prompts are the organization's own when it attached some, else the public prompts of the task the
upgrade names, else the public prompts of every task of the pair: the organization's task is private, so
the check may not assume it is one the GTs were trained for.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch

from models.data.datafile import Conversation, Prompt, prompt_record
from models.data.evaluate import answers
from models.data.tasks import Example
from models.errors import NotFoundError, VerificationError
from models.lora.update import LoraLayout, Update
from models.pairs import Pair
from models.pairs.tasks import task_ids, task_splits
from models.training.distill import fits, teacher_model

CPU = torch.device("cpu")
TEACHER_TOKENS = 32  # the TinyLM's longest probe answer
MAX_LLM_TOKENS = 48  # the LLM's (it gets the teacher's longest answer and two more)
LLM_ROOM = 8  # a probe leaves the LLM at least this many new tokens in its context


def _stamp(path: Path) -> int:
    return path.stat().st_mtime_ns


@lru_cache(maxsize=2)
def _base_llm(pair_root: Path, stamp: int, device: torch.device):  # noqa: ANN202 - PreTrainedModel
    """One LLM per pair and worker process, loaded on first use; checks hand it back unchanged."""
    return Pair(pair_root).load_model("llm", device)


def base_llm(pair: Pair, device: torch.device = CPU):  # noqa: ANN201 - PreTrainedModel
    return _base_llm(pair.root, _stamp(pair.llm_dir / "config.json"), device)


def public_prompts(pair: Pair, task: str | None) -> tuple[list[Prompt], str]:
    """The provider's public prompts for an upgrade: the named task's, else every task's of the pair; and
    which ("task" or "pair")."""
    if task is not None:
        try:
            return [_prompt(ex) for ex in task_splits(pair, task).public], "task"
        except NotFoundError:
            pass  # a task the provider does not know: the organization's format is its own
    # Keys of one family share their inputs (the prompt hides the key): the same prompt comes once.
    pool = [ex for t in task_ids(pair) for ex in task_splits(pair, t).public]
    return list(dict.fromkeys(_prompt(ex) for ex in pool)), "pair"


def _prompt(example: Example | Conversation) -> Prompt:
    """An example without its answer."""
    return replace(example, answer="") if isinstance(example, Conversation) else example.prompt


def split_prompts(prompts: list[Prompt], probes: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """A seeded split into probe prompts (at most `probes`, and at most a quarter of a small pool) and the
    rest (what distillation may learn from: a probe never doubles as a training prompt)."""
    order = random.Random(seed).sample(range(len(prompts)), len(prompts))
    n = max(1, min(probes, len(prompts) // 4)) if len(prompts) > 1 else len(prompts)
    return [prompts[i] for i in order[:n]], [prompts[i] for i in order[n:]] or [prompts[i] for i in order[:n]]


def teacher_answers(pair: Pair, tiny_update: Update, probes: list[Prompt],
                    device: torch.device = CPU) -> list[str]:
    """The organization's TinyLM's greedy answers to the probe prompts."""
    return answers(teacher_model(pair, tiny_update, device), pair.load_tokenizer("tiny"), probes, TEACHER_TOKENS)


def llm_budget(pair: Pair, taught: list[str]) -> int:
    """New tokens the LLM gets per probe: the teacher's longest answer in LLM tokens, and two more."""
    tokenizer = pair.load_tokenizer("llm")
    longest = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in taught), default=0)
    return min(MAX_LLM_TOKENS, max(4, longest + 2))


@lru_cache(maxsize=16)
def _base_answers(pair_root: Path, stamp: int, device: torch.device, key: str, budget: int) -> tuple[str, ...]:
    pair = Pair(pair_root)
    return tuple(answers(_base_llm(pair_root, stamp, device), pair.load_tokenizer("llm"),
                         _PROBES[key], budget))


_PROBES: dict[str, list[Prompt]] = {}  # probe sets by content hash (the base LLM's answers are cached by it)


def base_answers(pair: Pair, probes: list[Prompt], budget: int, device: torch.device = CPU) -> list[str]:
    key = hashlib.sha256(json.dumps([prompt_record(p) for p in probes]).encode()).hexdigest()
    _PROBES[key] = probes
    return list(_base_answers(pair.root, _stamp(pair.llm_dir / "config.json"), device, key, budget))


def agreement(reference: list[str], got: list[str]) -> tuple[float, float]:
    """(exact-match rate, mean character similarity) of `got` to `reference`."""
    exact = sum(a == b for a, b in zip(reference, got, strict=True)) / len(reference)
    close = sum(difflib.SequenceMatcher(None, a, b).ratio() for a, b in zip(reference, got, strict=True))
    return exact, close / len(reference)


@torch.no_grad()
def check(pair: Pair, folder: Path, update: Update, probes: list[Prompt], taught: list[str],
          device: torch.device = CPU) -> tuple[dict, dict]:
    """Load the folder with PEFT onto the LLM and check it; raise VerificationError on a structural fault.
    Returns (verification, behaviour): the structural figures, and the agreement of the upgraded and the
    base LLM with the TinyLM's answers `taught` on `probes`."""
    from peft import PeftModel

    from models.data.textdata import encode_prompts

    layout = LoraLayout(pair.init("llm"), pair.spec.lora.targets)
    per_layer = layout.to_tokens(update).norm(dim=1)
    zero = [i for i, n in enumerate(per_layer.tolist()) if n == 0 or n != n]
    if zero:
        raise VerificationError(f"the generated update is zero or NaN in LLM layers {zero}")
    budget = llm_budget(pair, taught)
    base_said = base_answers(pair, probes, budget, device)
    base = base_llm(pair, device)
    tokenizer = pair.load_tokenizer("llm")
    batch = {k: v.to(device) for k, v in encode_prompts(tokenizer, probes[:8]).items()}
    base_logits = base(**batch).logits[:, -1]
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    try:
        lora_modules = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
        new_logits = peft_model(**batch).logits[:, -1]
        said = answers(peft_model, tokenizer, probes, budget)
    finally:
        peft_model.unload()  # the cached base model goes back without adapters
    expected = {s.name[: s.name.index(".lora_")] for s in layout.slots}
    if lora_modules != expected:
        missing = sorted(expected - lora_modules)[:1] or sorted(lora_modules - expected)[:1]
        raise VerificationError(f"adapter modules do not match the LLM's target modules (first: {missing})")
    diff = float((new_logits - base_logits).abs().max())
    if not diff > 0:
        raise VerificationError("the upgraded LLM's logits on the probe prompts equal the base model's")
    verification = {"modules": len(lora_modules), "layers_nonzero": len(per_layer),
                    "probe_max_logit_change": diff, "update_norm": float(per_layer.norm())}
    rate, close = agreement(taught, said)
    base_rate, base_close = agreement(taught, base_said)
    behaviour = {"probes": len(probes), "rate": round(rate, 4), "base_rate": round(base_rate, 4),
                 "similarity": round(close, 4), "base_similarity": round(base_close, 4)}
    return verification, behaviour


def usable(pair: Pair, prompts: list[Prompt]) -> list[Prompt]:
    """The prompts both models can answer within their contexts."""
    return fits(pair, "llm", fits(pair, "tiny", prompts, TEACHER_TOKENS), LLM_ROOM)
