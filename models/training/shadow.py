"""Shadow pairs: the provider's stand-in for organizations' updates, made from its public data.

For each of K subsets of a task's public half, fine-tune the TinyLM and the LLM from the pair's fixed
init on the same examples in the same order, keep the update at each of the last N steps, and pair
TinyLM snapshot i with LLM snapshot i. Runs train in chunks, each model's runs of a chunk in one loop
(`models.training.multirun`); one file per run, written atomically when its chunk is done, so a killed
build resumes where it stopped. Chunks run in parallel worker processes, or as jobs on the service's
`train` queue.

A plan may carry an organization's privacy settings, as the paper trains GTs for DP clients: the TinyLM
runs are then DP-SGD fine-tunes (`dp`) and/or their snapshots are clipped and perturbed (`update_noise`),
exactly as a client's upload would be. The LLM runs stay plain: their updates are the targets, the best
LLM update for the data, and the provider's public data needs no protection; they are read from the
plain plan's files when those exist. Shadow runs use seeded
noise (public data), so a rebuilt run is identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from models.data.datafile import TrainingExample
from models.data.tasks import subset
from models.errors import ConfigError
from models.lora.privacy import DPConfig, UpdateNoise
from models.lora.update import LoraLayout, save_update
from models.pairs import Pair
from models.pairs.tasks import task_splits
from models.training.finetune import FinetuneConfig, finetune_lora
from models.training.multirun import OnRunsStep, finetune_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowPlan:
    task: str
    subsets: int = 8  # K
    subset_size: int = 1000
    keep_last: int = 10  # snapshots per run
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    dp: DPConfig | None = None  # the TinyLM runs are DP-SGD fine-tunes
    update_noise: UpdateNoise | None = None  # the TinyLM snapshots are clipped and perturbed
    llm_finetune: FinetuneConfig | None = None  # the LLM's own recipe; None: the same as the TinyLM's

    def __post_init__(self) -> None:
        for name, value in (("dp", self.dp), ("update_noise", self.update_noise)):
            if value is not None and value.seed is not None:
                raise ConfigError(f"a shadow plan's {name} takes no seed: each run's noise follows the run's seed")

    def side_finetune(self, side: str) -> FinetuneConfig:
        return self.llm_finetune if side == "llm" and self.llm_finetune is not None else self.finetune

    def key(self) -> str:
        """A folder name that changes whenever anything but K changes (K only adds files)."""
        # Optional settings join the hash only when set: plans without them keep their folders.
        optional = ("dp", "update_noise", "llm_finetune")
        body = {k: v for k, v in asdict(self).items()
                if k not in ("task", "subsets") and not (k in optional and v is None)}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]

    def privacy(self) -> dict[str, Any] | None:
        """The privacy settings of the plan's TinyLM runs, as recorded in a GT's metadata."""
        if self.dp is None and self.update_noise is None:
            return None
        return {"dp_sgd": self.dp.describe() if self.dp else None,
                "update_noise": self.update_noise.describe() if self.update_noise else None}

    def plain(self) -> ShadowPlan:
        """The same plan without the privacy settings: its LLM runs are this plan's LLM runs."""
        return replace(self, dp=None, update_noise=None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowPlan:
        """The plan `asdict` wrote (as a build's row keeps it)."""
        data = dict(data)
        for name in ("finetune", "llm_finetune"):
            data[name] = FinetuneConfig(**data[name]) if data.get(name) is not None else None
        data["dp"] = DPConfig(**data["dp"]) if data.get("dp") else None
        data["update_noise"] = UpdateNoise(**data["update_noise"]) if data.get("update_noise") else None
        return cls(**data)

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


def run_seed(plan: ShadowPlan, index: int) -> int:
    """Run `index`'s seed: its data order, its dropout and its privacy noise."""
    return plan.seed * 100_003 + index


def _train_side(pair: Pair, plan: ShadowPlan, side: str, indices: list[int],
                datasets: list[list[TrainingExample]], on_step: OnRunsStep | None = None) -> list[torch.Tensor]:
    """One model's fine-tunes of the given runs, each as [keep_last, L, D] snapshot tokens. Plain runs
    train together in one loop (`finetune_many`); DP-SGD runs one at a time (per-example clipping)."""
    cfg = replace(plan.side_finetune(side), keep_last=plan.keep_last)
    model, tokenizer = _model(pair, side)
    init = pair.init(side)
    layout = LoraLayout(init, pair.spec.lora.targets)
    seeds = [run_seed(plan, i) for i in indices]
    if plan.dp is not None and side == "tiny":
        runs = [finetune_lora(model, tokenizer, init, pair.spec.lora, data, replace(cfg, seed=seed),
                              dp=replace(plan.dp, seed=seed)).snapshots
                for data, seed in zip(datasets, seeds, strict=True)]
    else:
        runs = [r.snapshots for r in finetune_many(model, tokenizer, init, pair.spec.lora, datasets, cfg, seeds,
                                                   on_step)]
    if plan.update_noise is not None and side == "tiny":
        runs = [[replace(plan.update_noise, seed=seed * 1000 + i).apply(u) for i, u in enumerate(snapshots)]
                for snapshots, seed in zip(runs, seeds, strict=True)]
    return [torch.stack([layout.to_tokens(u) for u in snapshots]) for snapshots in runs]  # [N, L, D] each


def _write_run(out: Path, tokens: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write one run's file atomically under a name no other writer uses, so two workers that both ran
    it (a lease ran out) leave one whole file, never a torn one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    save_update({"src": tokens["tiny"], "tgt": tokens["llm"]}, tmp, meta)
    os.replace(tmp, out)


STALE_TMP_S = 600  # a run's file is written in well under a second: an older temporary file is a dead writer's


def _clear_debris(folder: Path, indices: list[int]) -> None:
    """Remove the temporary files of these runs that a worker killed while writing them left behind."""
    for index in indices:
        for tmp in folder.glob(f"{index:04d}.safetensors.*.tmp"):
            if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink(missing_ok=True)


def run_subsets(pair_root: str, plan: ShadowPlan, indices: Sequence[int],
                on_step: OnRunsStep | None = None) -> list[str]:
    """Fine-tune both models on each subset in `indices` (each model's runs in one loop); write each run's
    paired snapshots as its own file. Runs whose file exists are left alone. Returns the file paths.
    `on_step` hears every step of the batched loops (it may raise to stop the chunk: nothing is written)."""
    pair = Pair(Path(pair_root))
    todo = [i for i in indices if not plan.run_path(pair, i).is_file()]
    _clear_debris(plan.folder(pair), todo)
    if todo:
        public = task_splits(pair, plan.task).public
        datasets = {i: subset(public, plan.subset_size, plan.seed, i) for i in todo}
        tokens: dict[int, dict[str, torch.Tensor]] = {i: {} for i in todo}
        if plan.privacy() is not None:  # the LLM side of a private plan is its plain plan's, bit for bit
            for i in todo:
                if (plain := plan.plain().run_path(pair, i)).is_file():
                    with safe_open(str(plain), "pt") as f:
                        tokens[i]["llm"] = f.get_tensor("tgt")
        for side in ("tiny", "llm"):
            need = [i for i in todo if side not in tokens[i]]
            if need:
                trained = _train_side(pair, plan, side, need, [datasets[i] for i in need], on_step)
                for i, t in zip(need, trained, strict=True):
                    tokens[i][side] = t
        for i in todo:
            _write_run(plan.run_path(pair, i), tokens[i], {"index": i, "plan": asdict(plan)})
    return [str(plan.run_path(pair, i)) for i in indices]


def run_subset(pair_root: str, plan: ShadowPlan, index: int) -> str:
    """Fine-tune both models on subset `index`; write its paired snapshots. Returns the file path."""
    return run_subsets(pair_root, plan, [index])[0]


def _worker_init() -> None:
    torch.set_num_threads(1)


def chunks(indices: list[int], size: int) -> list[list[int]]:
    """Consecutive runs in groups of `size`: what one training loop (one worker's job) takes."""
    if size < 1:
        raise ConfigError(f"a chunk holds at least one run, not {size}")
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def build_shadow(pair: Pair, plans: list[ShadowPlan], workers: int = 1, progress: bool = True,
                 chunk: int = 8) -> None:
    """Build every missing subset of every plan, `chunk` runs per training loop; safe to kill and run again."""
    todo = [(plan, part) for plan in plans
            for part in chunks([i for i in range(plan.subsets) if not plan.run_path(pair, i).is_file()], chunk)]
    if not todo:
        return
    bar = tqdm(total=sum(len(part) for _, part in todo), desc="shadow runs", unit="run", disable=not progress)
    if workers <= 1:
        for plan, part in todo:
            run_subsets(str(pair.root), plan, part)
            bar.update(len(part))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = {pool.submit(run_subsets, str(pair.root), plan, part): len(part) for plan, part in todo}
            for future in as_completed(futures):
                future.result()
                bar.update(futures[future])
    bar.close()


def shadow_privacy(plans: list[ShadowPlan]) -> dict[str, Any] | None:
    """The privacy settings a GT trained on these plans learned from (recorded in its config.json)."""
    settings = {json.dumps(p.privacy(), sort_keys=True) for p in plans}
    if len(settings) > 1:
        raise ConfigError("these shadow plans mix privacy settings; train one GT per setting")
    return plans[0].privacy() if plans else None


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
