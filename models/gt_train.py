"""Training a Gradient Transformer on shadow pairs: teacher forcing with MSE, checkpoint chosen by the
free-running (autoregressive) validation loss, as generation will run it."""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass

import torch
from tqdm import tqdm

from models.grad_transformer import GradientTransformer, GTConfig
from models.shadow import ShadowSet

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
    d_model: int = 128
    n_heads: int = 4
    n_enc: int = 2
    n_dec: int = 2
    d_ff: int = 512
    dropout: float = 0.1


def split_runs(data: ShadowSet, share: float, seed: int) -> tuple[ShadowSet, ShadowSet]:
    """Train/validation split by run; with fewer than 5 runs every run trains and validates."""
    runs = sorted(set(data.run.tolist()))
    if len(runs) < 5:
        return data, data
    held = set(random.Random(seed).sample(runs, max(1, round(share * len(runs)))))
    mask = torch.tensor([r in held for r in data.run.tolist()])
    return data.select(~mask), data.select(mask)


@torch.no_grad()
def free_running_loss(model: GradientTransformer, data: ShadowSet) -> float:
    model.eval()
    pred = model.generate(data.src, normalised=True)
    return float(torch.nn.functional.mse_loss(pred, model.normalise_target(data.tgt)))


def train_gt(data: ShadowSet, cfg: GTTrainConfig, progress: bool = True) -> tuple[GradientTransformer, dict]:
    """Returns the model with the best free-running validation loss, and its training history."""
    torch.manual_seed(cfg.seed)
    train, val = split_runs(data, cfg.val_runs, cfg.seed)
    _, l_s, d_s = data.src.shape
    _, l_t, d_t = data.tgt.shape
    model = GradientTransformer(GTConfig(l_s, d_s, l_t, d_t, cfg.d_model, cfg.n_heads, cfg.n_enc, cfg.n_dec,
                                         cfg.d_ff, cfg.dropout))
    model.set_statistics(train.src, train.tgt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (free_running_loss(model, val), copy.deepcopy(model.state_dict()), 0)  # step 0 = the mean update
    history = [{"step": 0, "val_free_running": best[0]}]
    bar = tqdm(range(1, cfg.steps + 1), desc="GT training", disable=not progress)
    for step in bar:
        model.train()
        idx = torch.randint(len(train.task), (min(cfg.batch_size, len(train.task)),), generator=gen)
        _, loss = model(train.src[idx], train.tgt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_loss = free_running_loss(model, val)
            history.append({"step": step, "train_loss": loss.item(), "val_free_running": val_loss})
            bar.set_postfix(train=f"{loss.item():.3f}", val=f"{val_loss:.3f}")
            if val_loss < best[0]:
                best = (val_loss, copy.deepcopy(model.state_dict()), step)
            elif step - best[2] >= cfg.patience * cfg.eval_every:
                break
    model.load_state_dict(best[1])
    model.eval()
    bar.close()
    return model, {"history": history, "best_val_free_running": best[0], "best_step": best[2],
                   "train_pairs": len(train.task), "val_pairs": len(val.task)}
