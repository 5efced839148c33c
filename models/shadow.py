"""Shadow pairs: the provider's stand-in for organizations' updates, made from its public data.

For each of K subsets of a task's public half, fine-tune the TinyLM and the LLM from the pair's fixed
init on the same examples in the same order, keep the update at each of the last N steps, and pair
TinyLM snapshot i with LLM snapshot i. One file per subset, written when the subset is done, so a
killed build resumes where it stopped; subsets run in parallel worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from models.finetune import FinetuneConfig, finetune_lora
from models.pairs import Pair
from models.tasks import get_task, make_splits, subset
from models.update import LoraLayout, save_update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowPlan:
    task: str
    subsets: int = 8  # K
    subset_size: int = 1000
    keep_last: int = 10  # snapshots per run
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    llm_finetune: FinetuneConfig | None = None  # the LLM's own recipe; None: the same as the TinyLM's

    def side_finetune(self, side: str) -> FinetuneConfig:
        return self.llm_finetune if side == "llm" and self.llm_finetune is not None else self.finetune

    def key(self) -> str:
        """A folder name that changes whenever anything but K changes (K only adds files)."""
        body = {k: v for k, v in asdict(self).items() if k not in ("task", "subsets") and v is not None}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]

    def folder(self, pair: Pair) -> Path:
        return pair.shadow_dir / self.task / self.key()

    def run_path(self, pair: Pair, index: int) -> Path:
        return self.folder(pair) / f"{index:04d}.safetensors"


_MODELS: dict[tuple[str, str], tuple] = {}  # per worker process: (pair root, side) -> (model, tokenizer)


def _model(pair: Pair, side: str):
    key = (str(pair.root), side)
    if key not in _MODELS:
        _MODELS[key] = (pair.load_model(side), pair.load_tokenizer(side))
    return _MODELS[key]


def run_subset(pair_root: str, plan: ShadowPlan, index: int) -> str:
    """Fine-tune both models on subset `index`; write its paired snapshots. Returns the file path."""
    pair = Pair(Path(pair_root))
    out = plan.run_path(pair, index)
    if out.is_file():
        return str(out)
    task = get_task(plan.task)
    examples = subset(make_splits(task, seed=pair.spec.seed).public, plan.subset_size, plan.seed, index)
    tokens = {}
    for side in ("tiny", "llm"):
        cfg = FinetuneConfig(**{**asdict(plan.side_finetune(side)), "seed": plan.seed * 100_003 + index,
                                "keep_last": plan.keep_last})
        model, tokenizer = _model(pair, side)
        init = pair.init(side)
        layout = LoraLayout(init, pair.spec.lora.targets)
        result = finetune_lora(model, tokenizer, init, pair.spec.lora, examples, cfg)
        tokens[side] = torch.stack([layout.to_tokens(u) for u in result.snapshots])  # [N, L, D]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_update({"src": tokens["tiny"], "tgt": tokens["llm"]}, tmp, {"index": index, "plan": asdict(plan)})
    os.replace(tmp, out)
    return str(out)


def _worker_init() -> None:
    torch.set_num_threads(1)


def build_shadow(pair: Pair, plans: list[ShadowPlan], workers: int = 1, progress: bool = True) -> None:
    """Build every missing subset of every plan; safe to kill and run again."""
    todo = [(plan, i) for plan in plans for i in range(plan.subsets) if not plan.run_path(pair, i).is_file()]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="shadow runs", unit="run", disable=not progress)
    if workers <= 1:
        for plan, i in todo:
            run_subset(str(pair.root), plan, i)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = [pool.submit(run_subset, str(pair.root), plan, i) for plan, i in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()


@dataclass
class ShadowSet:
    src: torch.Tensor  # [N, L_S, D_S]
    tgt: torch.Tensor  # [N, L_T, D_T]
    run: torch.Tensor  # [N] run index, unique across tasks: snapshots of one run share it
    task: list[str]  # [N]

    def select(self, mask: torch.Tensor) -> ShadowSet:
        idx = mask.nonzero().flatten().tolist()
        return ShadowSet(self.src[idx], self.tgt[idx], self.run[idx], [self.task[i] for i in idx])


def load_shadow(pair: Pair, plans: list[ShadowPlan]) -> ShadowSet:
    """Every snapshot of the given plans, stacked."""
    src, tgt, run, task = [], [], [], []
    for plan in plans:
        for i in range(plan.subsets):
            with safe_open(str(plan.run_path(pair, i)), "pt") as f:
                s, t = f.get_tensor("src"), f.get_tensor("tgt")
            src.append(s)
            tgt.append(t)
            run += [len(src) - 1] * len(s)
            task += [plan.task] * len(s)
    return ShadowSet(torch.cat(src), torch.cat(tgt), torch.tensor(run), task)
