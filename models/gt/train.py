"""Training a Gradient Transformer on shadow pairs: teacher forcing with MSE, checkpoint chosen by the
free-running (autoregressive) validation loss, as generation will run it."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass

import torch
from tqdm import tqdm

from models.errors import ConfigError
from models.gt.network import GradientTransformer, GTArch, GTConfig
from models.training.shadow import ShadowSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GTTrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    val_runs: float = 0.1  # share of shadow runs held out (whole runs: snapshots of one run are alike)
    eval_every: int = 100
    patience: int = 5  # evaluations without a better free-running loss before training stops
    seed: int = 0
    arch: GTArch = GTArch()
    route: bool = False  # start from the shadow updates nearest the input (GTConfig.prototypes)
    route_by: str = "run"  # one prototype per shadow "run", or per "task" (the mean of its runs' updates)
    temperature_lr: float | None = None  # the routing temperature's own learning rate (None: `lr`)
    refit: bool = True  # train the chosen step count again on every run (see train_gt)

    def __post_init__(self) -> None:
        if self.route_by not in ("run", "task"):
            raise ConfigError(f"route_by is 'run' or 'task', not {self.route_by!r}")


def split_runs(data: ShadowSet, share: float, seed: int) -> tuple[ShadowSet, ShadowSet]:
    """Train/validation split by whole runs, the same share of every task's runs (at least one each), so
    validation asks about every task; with fewer than 5 runs every run trains and validates."""
    runs = sorted(set(data.run.tolist()))
    if len(runs) < 5:
        return data, data
    task_of = {r: t for r, t in zip(data.run.tolist(), data.task, strict=True)}
    rng, held = random.Random(seed), set()
    for task in sorted(set(data.task)):
        own = [r for r in runs if task_of[r] == task]
        if len(own) > 1:
            held |= set(rng.sample(own, max(1, round(share * len(own)))))
    mask = torch.tensor([r in held for r in data.run.tolist()])
    return data.select(~mask), data.select(mask)


@torch.no_grad()
def free_running_loss(model: GradientTransformer, data: ShadowSet) -> float:
    model.eval()
    pred = model.generate(data.src, normalised=True)
    return float(torch.nn.functional.mse_loss(pred, model.normalise_target(data.tgt)))


def train_gt(data: ShadowSet, cfg: GTTrainConfig, progress: bool = True) -> tuple[GradientTransformer, dict]:
    """The model with the best free-running validation loss, and its training history. When validation
    held runs out, the step count it chose is then trained again on every run (`refit`; zero steps still
    takes statistics and prototypes from every run): with a few runs per task, the held-out ones are too
    many to leave out of the final model."""
    train, val = split_runs(data, cfg.val_runs, cfg.seed)
    model, info = _fit(train, val, cfg, cfg.steps, progress)
    if cfg.refit and val is not data:
        model, _ = _fit(data, None, cfg, info["best_step"], progress)
        info["refit_pairs"] = len(data.task)
    return model, info


def untrained_gt(data: ShadowSet, cfg: GTTrainConfig) -> GradientTransformer:
    """The network `train_gt` starts from on these runs, before any step: the mean shadow update (or, routed,
    the runs' updates weighted by their likeness to the input). What training must beat."""
    return _fit(data, None, cfg, 0, progress=False)[0]


def route_groups(data: ShadowSet, cfg: GTTrainConfig) -> list | None:
    """Each snapshot's prototype when routing a GT for several tasks: its run's, or its task's (`route_by`);
    None without routing or with one task (its mean suffices)."""
    if not cfg.route or len(set(data.task)) < 2:
        return None
    return data.run.tolist() if cfg.route_by == "run" else list(data.task)


def _fit(train: ShadowSet, val: ShadowSet | None, cfg: GTTrainConfig, steps: int, progress: bool
         ) -> tuple[GradientTransformer, dict]:
    """`steps` steps of the cfg.steps-step schedule; with `val`, the best checkpoint by free-running loss."""
    torch.manual_seed(cfg.seed)
    _, l_s, d_s = train.src.shape
    _, l_t, d_t = train.tgt.shape
    groups = route_groups(train, cfg)
    model = GradientTransformer(GTConfig(l_s, d_s, l_t, d_t, cfg.arch, len(set(groups)) if groups else 0))
    model.set_statistics(train.src, train.tgt)
    if groups:
        model.set_prototypes(train.src, train.tgt, groups)
    rest = [p for p in model.parameters() if p is not model.log_temperature]
    param_groups = [{"params": rest, "lr": cfg.lr}]
    if model.log_temperature is not None:  # no decay: it would pull the temperature towards 1
        param_groups.append({"params": [model.log_temperature], "lr": cfg.temperature_lr or cfg.lr,
                             "weight_decay": 0.0})
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in param_groups], total_steps=cfg.steps,
                                                pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (free_running_loss(model, val), copy.deepcopy(model.state_dict()), 0) if val is not None else \
        (float("nan"), None, 0)
    history = [{"step": 0, "val_free_running": best[0]}]  # step 0: the mean update, or the routed start
    bar = tqdm(range(1, steps + 1), desc="GT training" if val is not None else "GT refit", disable=not progress)
    for step in bar:
        model.train()
        idx = torch.randint(len(train.task), (min(cfg.batch_size, len(train.task)),), generator=gen)
        _, loss = model(train.src[idx], train.tgt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if val is not None and (step % cfg.eval_every == 0 or step == steps):
            val_loss = free_running_loss(model, val)
            history.append({"step": step, "train_loss": loss.item(), "val_free_running": val_loss})
            bar.set_postfix(train=f"{loss.item():.3f}", val=f"{val_loss:.3f}")
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(model.state_dict()), step)
            elif step - best[2] >= cfg.patience * cfg.eval_every:
                break
    if val is not None:
        model.load_state_dict(best[1])
    model.eval()
    bar.close()
    return model, {"history": history, "best_val_free_running": best[0], "best_step": best[2],
                   "train_pairs": len(train.task), "val_pairs": len(val.task) if val is not None else 0}
