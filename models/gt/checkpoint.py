"""Gradient Transformer checkpoints: safetensors weights + a sorted JSON config, never pickle.

    <gt_dir>/config.json        {"gt": GTConfig, "pair", "task", "tasks", "data_sha256", "versions", ...}
    <gt_dir>/model.safetensors  weights and the standardisation statistics
    <gt_dir>/reference.safetensors  one point per shadow run it learned from (models/gt/reference.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.errors import NotFoundError
from models.gt.network import GradientTransformer, GTConfig
from models.gt.reference import build_reference, save_reference
from models.training.shadow import ShadowSet


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def data_hash(*tensors: torch.Tensor) -> str:
    """sha256 of the training pairs, so a checkpoint names the data it learned from."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def save_gt(model: GradientTransformer, out_dir: Path, meta: dict, data: ShadowSet | None = None) -> Path:
    """Write config.json and model.safetensors (and, given the training data, the reference of its runs)
    into out_dir, atomically (staged, then renamed)."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    staging.mkdir(parents=True, exist_ok=True)
    if data is not None:
        save_reference(build_reference(model, data), staging)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(staging / "model.safetensors"))
    config = {**meta, "gt": model.cfg.to_dict(), "versions": versions(),
              "weights_sha256": hashlib.sha256((staging / "model.safetensors").read_bytes()).hexdigest()}
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(staging, out_dir)
    return out_dir


def read_config(gt_dir: Path) -> dict:
    """A checkpoint's config.json contents (what it was trained on and how), without its weights."""
    gt_dir = Path(gt_dir)
    if not (gt_dir / "config.json").is_file():
        raise NotFoundError(f"no Gradient Transformer at {gt_dir}")
    return json.loads((gt_dir / "config.json").read_text())


def load_gt(gt_dir: Path) -> tuple[GradientTransformer, dict]:
    """The model (eval mode) and its config.json contents."""
    gt_dir = Path(gt_dir)
    meta = read_config(gt_dir)
    model = GradientTransformer(GTConfig.from_dict(meta["gt"]))
    model.load_state_dict(load_file(str(gt_dir / "model.safetensors")))
    return model.eval(), meta
