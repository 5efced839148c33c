"""LoRA fine-tuning from a pair's fixed init tensors: one function for shadow runs, private baselines
and the organization's client.

The run starts from the stored A0/B0 (never a fresh seed), so an update made here, by a shadow run or by
an organization's own PEFT code started from the published init, lives in the same coordinates.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.pairs import LoraSpec, Pair
from models.tasks import Example, get_task, make_splits
from models.textdata import encode_batch
from models.update import Update, save_update, subtract


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 150
    batch_size: int = 16
    lr: float = 3e-3  # 1e-3 left 1 in 3 rotate fine-tunes of the toy LLM unlearned; 3e-3 learned all (measured)
    seed: int = 0
    keep_last: int = 0  # snapshots of the update at each of the last N steps (shadow pairs)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.keep_last <= self.steps:
            raise ValueError(f"invalid fine-tune settings: {self}")


@dataclass
class FinetuneResult:
    update: Update  # after the last step
    snapshots: list[Update] = field(default_factory=list)  # oldest first; the last equals `update`
    losses: list[float] = field(default_factory=list)


def finetune_lora(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, init: Update, lora: LoraSpec,
                  examples: list[Example], cfg: FinetuneConfig,
                  on_step: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Fine-tune LoRA adapters of `model` (left unchanged) from `init` on `examples`."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    peft_model = get_peft_model(model, lora.peft_config())
    result = set_peft_model_state_dict(peft_model, init)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"init tensors do not fit the model: {result.unexpected_keys[:3]}")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    out = FinetuneResult(update={})
    order: list[int] = []
    peft_model.train()
    try:
        for step in range(cfg.steps):
            if len(order) < cfg.batch_size:
                order += rng.sample(range(len(examples)), len(examples))
            batch = encode_batch(tokenizer, [examples[i] for i in order[:cfg.batch_size]])
            del order[:cfg.batch_size]
            loss = peft_model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.losses.append(loss.item())
            if on_step is not None:
                on_step(step, out.losses[-1])
            if step >= cfg.steps - cfg.keep_last:
                out.snapshots.append(subtract(get_peft_model_state_dict(peft_model), init))
        out.update = subtract(get_peft_model_state_dict(peft_model), init)
    finally:
        peft_model.unload()  # hand the base model back without adapters
        model.eval()
    return out


def write_adapter_folder(out_dir: Path, lora: LoraSpec, base: str, weights: Update,
                         metadata: dict | None = None) -> Path:
    """A standard PEFT adapter folder: adapter_config.json + adapter_model.safetensors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = lora.peft_config()
    config.base_model_name_or_path = base
    config.save_pretrained(str(out_dir))
    save_update(weights, out_dir / "adapter_model.safetensors", metadata=metadata)
    if metadata:
        (out_dir / "gradlift.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return out_dir


def finetune_adapter(pair: Pair, task: str, out_dir: Path, steps: int = 60, seed: int = 0,
                     examples: list[Example] | None = None, cfg: FinetuneConfig | None = None) -> Path:
    """Fine-tune the pair's TinyLM on a task's private split (or `examples`); write a PEFT adapter folder.

    `cfg` gives the whole recipe; without it, `steps` and `seed` with the default batch size and rate."""
    from models.update import add

    cfg = cfg or FinetuneConfig(steps=steps, seed=seed)
    data = examples if examples is not None else make_splits(get_task(task), seed=pair.spec.seed).private
    init = pair.init("tiny")
    result = finetune_lora(pair.load_model("tiny"), pair.load_tokenizer("tiny"), init, pair.spec.lora, data, cfg)
    return write_adapter_folder(Path(out_dir), pair.spec.lora, str(pair.tiny_dir), add(init, result.update),
                                {"pair": pair.id, "task": task, "steps": cfg.steps, "seed": cfg.seed})
