"""LoRA fine-tuning from a pair's fixed init tensors: one function for shadow runs, private baselines
and the organization's client.

The run starts from the stored A0/B0 (never a fresh seed), so an update made here, by a shadow run or by
an organization's own PEFT code started from the published init, lives in the same coordinates.
With a `DPConfig` the run is DP-SGD (models/lora/privacy.py); with an `UpdateNoise` the written update is
clipped and perturbed first.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.data.datafile import TrainingExample
from models.data.tasks import Example
from models.data.textdata import IGNORE, encode_batch
from models.errors import ConfigError
from models.lora.privacy import DPConfig, UpdateNoise, generator, spent_epsilon
from models.lora.spec import LoraSpec
from models.lora.update import Update, add, save_update, subtract
from models.pairs import Pair
from models.pairs.tasks import task_splits

OnStep = Callable[[int, float], None]


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 150
    batch_size: int = 16  # DP-SGD: the expected size of a Poisson-sampled batch
    lr: float = 3e-3  # 1e-3 left 1 in 3 rotate fine-tunes of the toy LLM unlearned; 3e-3 learned all (measured)
    seed: int = 0
    keep_last: int = 0  # snapshots of the update at each of the last N steps (shadow pairs)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.keep_last <= self.steps:
            raise ValueError(f"invalid fine-tune settings: {self}")


@dataclass
class FinetuneResult:
    update: Update  # after the last step, or averaged over the last `average_last` steps (LoRA factors)
    snapshots: list[Update] = field(default_factory=list)  # oldest first; the last is the last step's
    losses: list[float] = field(default_factory=list)
    dp: dict[str, Any] | None = None  # DP-SGD accounting: epsilon spent, noise multiplier, sample rate


def finetune_lora(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, init: Update, lora: LoraSpec,
                  examples: list[TrainingExample], cfg: FinetuneConfig, on_step: OnStep | None = None,
                  *, dp: DPConfig | None = None, average_last: int = 0) -> FinetuneResult:
    """Fine-tune LoRA adapters of `model` (left unchanged) from `init` on `examples` (DP-SGD with `dp`).
    With `average_last` the result's update is the mean over the last that many steps, kept as a running sum
    (one update's memory however many steps it averages). It is an argument, not a `FinetuneConfig` field:
    the config names shadow and private runs, and a delivery choice must not rename them."""
    from peft import get_peft_model, set_peft_model_state_dict

    if not 0 <= average_last <= cfg.steps:
        raise ConfigError(f"cannot average the last {average_last} of {cfg.steps} steps")
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora.peft_config())
    result = set_peft_model_state_dict(peft_model, init)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"init tensors do not fit the model: {result.unexpected_keys[:3]}")
    peft_model.train()
    try:
        record = _Record(init, cfg, on_step, max(average_last, 1))
        if dp is None:
            return _plain_steps(peft_model, tokenizer, examples, cfg, record)
        return _dp_steps(peft_model, tokenizer, examples, cfg, record, dp)
    finally:
        peft_model.unload()  # hand the base model back without adapters
        model.eval()


def batch_order(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """A run's batches of example indices: seeded shuffles of all n, one after another (one run alone
    and the same run among many draw the same batches)."""
    if n < 1:
        raise ConfigError("no examples to fine-tune on")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(n), n)
        yield order[:batch_size]
        del order[:batch_size]


@dataclass
class _Record:
    """What a run keeps of its steps: the losses, the updates of the last `keep_last` steps, and the update after
    the last step or summed over the last `averaged` steps and divided at the end."""

    init: Update
    cfg: FinetuneConfig
    on_step: OnStep | None
    averaged: int
    out: FinetuneResult = field(default_factory=lambda: FinetuneResult(update={}))

    def __call__(self, peft_model: torch.nn.Module, step: int, loss: float) -> None:
        from peft import get_peft_model_state_dict

        cfg, out = self.cfg, self.out
        out.losses.append(loss)
        if self.on_step is not None:
            self.on_step(step, loss)
        if step < cfg.steps - max(cfg.keep_last, self.averaged):
            return
        now = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}  # kept on the CPU
        update = subtract(now, self.init)
        if step >= cfg.steps - cfg.keep_last:
            out.snapshots.append(update)
        if step >= cfg.steps - self.averaged:
            out.update = {k: out.update[k] + v for k, v in update.items()} if out.update else update
        if step == cfg.steps - 1 and self.averaged > 1:
            out.update = {k: v / self.averaged for k, v in out.update.items()}


def _plain_steps(peft_model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 examples: list[TrainingExample], cfg: FinetuneConfig, record: _Record) -> FinetuneResult:
    device = next(peft_model.parameters()).device  # the model trains where it is
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    order = batch_order(len(examples), cfg.batch_size, cfg.seed)
    for step in range(cfg.steps):
        batch = encode_batch(tokenizer, [examples[i] for i in next(order)])
        loss = peft_model(**{k: v.to(device) for k, v in batch.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record(peft_model, step, loss.item())
    return record.out


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] mean next-token loss over each example's answer tokens; logits [B, T, V], labels [B, T]."""
    logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
    tokens = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # [B, T-1]
    counted = (labels != IGNORE).sum(1).clamp(min=1)
    return tokens.sum(1) / counted


def _dp_steps(peft_model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, examples: list[TrainingExample],
              cfg: FinetuneConfig, record: _Record, dp: DPConfig) -> FinetuneResult:
    """DP-SGD: Poisson sampling at rate batch/N, per-example clipping and Gaussian noise (Opacus)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = len(examples)
    if n < cfg.batch_size:
        raise ConfigError(f"DP-SGD samples each example with probability batch_size/N; {n} examples are fewer "
                          f"than the batch size {cfg.batch_size}")
    rate = cfg.batch_size / n
    sigma = dp.noise_multiplier(rate, cfg.steps)
    gen = generator(dp.seed)
    module = GradSampleModule(peft_model, batch_first=True, loss_reduction="mean")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = DPOptimizer(torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0), noise_multiplier=sigma,
                      max_grad_norm=dp.clip, expected_batch_size=cfg.batch_size, loss_reduction="mean",
                      generator=gen)
    out = record.out
    try:
        for step in range(cfg.steps):
            chosen = (torch.rand(n, generator=gen) < rate).nonzero().flatten().tolist()
            loss = _dp_step(module, opt, params, tokenizer, examples, chosen)
            record(peft_model, step, loss)
    finally:
        module._close()  # remove Opacus's hooks before the adapters are unloaded
    out.dp = {**dp.describe(), "epsilon_spent": spent_epsilon(sigma, rate, cfg.steps, dp.delta),
              "noise_multiplier": sigma, "sample_rate": rate, "steps": cfg.steps, "examples": n,
              "accountant": "rdp", "unit": "example"}
    return out


def _dp_step(module: torch.nn.Module, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
             tokenizer: PreTrainedTokenizerBase, examples: list[TrainingExample], chosen: list[int]) -> float:
    """One DP-SGD step on a Poisson batch; the batch's mean loss (NaN for an empty batch)."""
    loss = float("nan")
    if chosen:
        batch = encode_batch(tokenizer, [examples[i] for i in chosen])
        labels = batch.pop("labels")
        # Loss per example, then the batch mean: HF's loss divides by the batch's token count, which
        # would make one example's gradient depend on the other examples.
        mean = per_example_loss(module(**batch).logits, labels).mean()
        with warnings.catch_warnings():
            # The first adapted layer's input needs no gradient; Opacus reads only the output's, as torch notes.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            mean.backward()
        loss = mean.item()
    else:  # an empty Poisson batch still takes a (pure noise) step: the accountant counts every step
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


@dataclass(frozen=True)
class TinySource:
    """What an organization fine-tunes: the pair's TinyLM folder, its published LoRA init, the LoRA settings."""

    pair_id: str
    model_dir: Path
    init_path: Path
    lora: LoraSpec

    @classmethod
    def of(cls, pair: Pair) -> TinySource:
        return cls(pair.id, pair.tiny_dir, pair.tiny_init_path, pair.spec.lora)


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


def finetune_to_folder(source: TinySource, examples: list[TrainingExample], out_dir: Path, cfg: FinetuneConfig,
                       *, dp: DPConfig | None = None, update_noise: UpdateNoise | None = None,
                       on_step: OnStep | None = None, metadata: dict | None = None) -> Path:
    """Fine-tune the TinyLM on `examples`; write a PEFT adapter folder whose metadata records the privacy."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    init = load_file(str(source.init_path))
    model = AutoModelForCausalLM.from_pretrained(source.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.model_dir)
    result = finetune_lora(model, tokenizer, init, source.lora, examples, cfg, on_step, dp=dp)
    update = result.update if update_noise is None else update_noise.apply(result.update)
    privacy = {"dp_sgd": result.dp, "update_noise": update_noise.describe() if update_noise else None}
    meta = {"pair": source.pair_id, "steps": cfg.steps, "examples": len(examples), **(metadata or {}),
            "privacy": privacy if dp or update_noise else None}
    if dp is None:  # a DP run's data order is secret; a plain run is reproducible from its seed
        meta["seed"] = cfg.seed
    return write_adapter_folder(Path(out_dir), source.lora, str(source.model_dir), add(init, update), meta)


def finetune_adapter(pair: Pair, task: str, out_dir: Path, steps: int = 60, seed: int = 0,
                     examples: list[Example] | None = None, cfg: FinetuneConfig | None = None, *,
                     dp: DPConfig | None = None, update_noise: UpdateNoise | None = None) -> Path:
    """Fine-tune the pair's TinyLM on a task's private split (or `examples`); write a PEFT adapter folder.

    `cfg` gives the whole recipe; without it, `steps` and `seed` with the default batch size and rate."""
    data = examples if examples is not None else task_splits(pair, task).private
    return finetune_to_folder(TinySource.of(pair), data, out_dir, cfg or FinetuneConfig(steps=steps, seed=seed),
                              dp=dp, update_noise=update_noise, metadata={"task": task})
