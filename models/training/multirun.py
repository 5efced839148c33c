"""Many LoRA fine-tunes of one frozen model in one training loop.

Shadow runs share the base model and differ only in their data and LoRA tensors, so N runs train as one:
each step takes every run's batch (the batch `finetune_lora` would take alone: same seed, same order),
stacks them into one forward pass whose rows are grouped by run, and every target Linear adds each run's
own low-rank term to that run's rows,

    y[n] = x[n] W^T + scale * (x[n] A[n]^T) B[n]^T        x: [N, rows * T, in], A: [N, r, in], B: [N, out, r]

The loss is the sum over runs of each run's mean answer-token loss, so run n's gradient is exactly the
gradient of its own loss; one AdamW over the stacked tensors keeps per-run optimizer state (Adam is
element-wise). With dropout off, run n equals `finetune_lora` on the same data and seed (to float
rounding; tests/models/test_multirun.py). Logits are computed only where a label falls: on a 49k
vocabulary the output layer would otherwise cost more than the answer tokens need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.data.datafile import TrainingExample
from models.data.textdata import IGNORE, encode_batch
from models.errors import ConfigError
from models.lora.spec import LoraSpec
from models.lora.update import Update
from models.training.finetune import FinetuneConfig, FinetuneResult, batch_order

OnRunsStep = Callable[[int, list[float]], None]  # (step, each run's loss)


class RunState:
    """What every MultiLoraLinear of one loop shares: each run's dropout generator, and each run's width in
    the current batch (the width it would be padded to alone), so a run's masks never depend on others."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.widths = [0] * len(seeds)

    def dropout_mask(self, rows: int, width: int, features: int, keep: float) -> torch.Tensor:
        """[N, rows * width, features] of 0 and 1/keep: run n's mask drawn over its own width (zero beyond
        it, on padding)."""
        masks = [torch.empty(rows, own, features).bernoulli_(keep, generator=g)
                 for g, own in zip(self.generators, self.widths, strict=True)]
        if any(own != width for own in self.widths):
            masks = [F.pad(m, (0, 0, 0, width - m.shape[1])) for m in masks]
        return torch.stack(masks).reshape(len(masks), rows * width, features).div_(keep)


class MultiLoraLinear(torch.nn.Module):
    """A frozen Linear plus one trainable LoRA pair per run; rows of the input [rows, T, in] are grouped
    by run. Dropout is PEFT's (on the input of A), with each run's masks from its own generator."""

    def __init__(self, base: torch.nn.Linear, a0: torch.Tensor, b0: torch.Tensor, scale: float, dropout: float,
                 state: RunState) -> None:
        super().__init__()
        runs = len(state.generators)
        self.base, self.scale, self.dropout, self.state = base, scale, dropout, state
        self.a = torch.nn.Parameter(a0.detach().float().expand(runs, *a0.shape).clone())  # [N, r, in]
        self.b = torch.nn.Parameter(b0.detach().float().expand(runs, *b0.shape).clone())  # [N, out, r]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        runs = self.a.shape[0]
        grouped = x.reshape(runs, -1, x.shape[-1])  # [N, rows/N * T, in]
        if self.training and self.dropout:
            grouped = grouped * self.state.dropout_mask(x.shape[0] // runs, x.shape[1], x.shape[-1], 1 - self.dropout)
        low = torch.bmm(grouped, self.a.transpose(1, 2))  # [N, rows/N * T, r]
        # out + scale * low B^T in one kernel: [N, rows/N * T, out]
        return torch.baddbmm(out.reshape(runs, -1, out.shape[-1]), low, self.b.transpose(1, 2),
                             alpha=self.scale).reshape(out.shape)


def _module_names(init: Update) -> list[str]:
    """The adapted modules of an init file, in the model's own naming (PEFT prefixes removed)."""
    return sorted({name[: name.index(".lora_")].removeprefix("base_model.model.") for name in init})


def _peft_name(module: str, kind: str) -> str:
    return f"base_model.model.{module}.lora_{kind}.weight"


@contextmanager
def multi_lora(model: PreTrainedModel, init: Update, lora: LoraSpec, state: RunState
               ) -> Iterator[dict[str, MultiLoraLinear]]:
    """Swap every adapted Linear for a MultiLoraLinear of the state's runs; the model is handed back
    unchanged."""
    swapped: dict[str, MultiLoraLinear] = {}
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for module in _module_names(init):
            base = model.get_submodule(module)
            if not isinstance(base, torch.nn.Linear):
                raise ConfigError(f"init tensor module {module!r} is not a Linear of this model")
            a0, b0 = init[_peft_name(module, "A")], init[_peft_name(module, "B")]
            swapped[module] = MultiLoraLinear(base, a0, b0, lora.scale, lora.dropout, state)
            parent, _, child = module.rpartition(".")
            setattr(model.get_submodule(parent), child, swapped[module])
        yield swapped
    finally:
        for module, layer in swapped.items():
            parent, _, child = module.rpartition(".")
            setattr(model.get_submodule(parent), child, layer.base)
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])


def _updates(layers: dict[str, MultiLoraLinear], init: Update, runs: int) -> list[Update]:
    """Each run's dA, dB under PEFT's names."""
    out: list[Update] = [{} for _ in range(runs)]
    for module, layer in layers.items():
        for kind, stacked in (("A", layer.a), ("B", layer.b)):
            name = _peft_name(module, kind)
            for n in range(runs):
                out[n][name] = stacked[n].detach() - init[name].float()
    return out


def run_losses(model: PreTrainedModel, batch: dict[str, torch.Tensor], runs: int) -> torch.Tensor:
    """[N] each run's mean next-token loss over its answer tokens; batch rows are grouped by run."""
    labels = batch["labels"]
    target = torch.full_like(labels, IGNORE)
    target[:, :-1] = labels[:, 1:]  # position t predicts token t + 1
    keep = target != IGNORE  # [rows, T]: logits only where a label falls
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                   logits_to_keep=keep).logits  # [kept, V]
    tokens = F.cross_entropy(logits.float(), target[keep], reduction="none")  # [kept]
    run_of = torch.arange(runs).repeat_interleave(labels.shape[0] // runs)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(runs, dtype=tokens.dtype).index_add(0, run_of, tokens)
    counts = torch.zeros(runs, dtype=tokens.dtype).index_add(0, run_of, torch.ones_like(tokens))
    return sums / counts.clamp(min=1)


def finetune_many(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, init: Update, lora: LoraSpec,
                  datasets: Sequence[list[TrainingExample]], cfg: FinetuneConfig, seeds: Sequence[int],
                  on_step: OnRunsStep | None = None) -> list[FinetuneResult]:
    """Fine-tune one LoRA run per dataset in one loop; run n is `finetune_lora` on datasets[n] with
    `cfg` seeded seeds[n] (its data order and init). The model is left unchanged."""
    if len(datasets) != len(seeds) or not datasets:
        raise ConfigError(f"{len(datasets)} datasets for {len(seeds)} seeds: give one seed per run")
    runs = len(datasets)
    orders = [batch_order(len(data), cfg.batch_size, seed) for data, seed in zip(datasets, seeds, strict=True)]
    results = [FinetuneResult(update={}) for _ in range(runs)]
    state = RunState(seeds)
    with multi_lora(model, init, lora, state) as layers:
        params = [p for layer in layers.values() for p in (layer.a, layer.b)]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        model.train()
        try:
            for step in range(cfg.steps):
                rows = [datasets[n][i] for n in range(runs) for i in next(orders[n])]
                batch = encode_batch(tokenizer, rows)
                state.widths = batch["attention_mask"].sum(1).reshape(runs, -1).amax(1).tolist()
                losses = run_losses(model, batch, runs)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                _record(results, layers, init, cfg, step, losses.tolist(), on_step)
        finally:
            model.eval()
    return results


def _record(results: list[FinetuneResult], layers: dict[str, MultiLoraLinear], init: Update,
            cfg: FinetuneConfig, step: int, losses: list[float], on_step: OnRunsStep | None) -> None:
    for result, loss in zip(results, losses, strict=True):
        result.losses.append(loss)
    if on_step is not None:
        on_step(step, losses)
    if step >= cfg.steps - cfg.keep_last or step == cfg.steps - 1:
        updates = _updates(layers, init, len(results))
        for result, update in zip(results, updates, strict=True):
            if step >= cfg.steps - cfg.keep_last:
                result.snapshots.append(update)
            if step == cfg.steps - 1:
                result.update = update
