"""Versions of a pair's Gradient Transformers: a training adds a version; activating one puts it in service.

    <pair>/gt_versions/<gt_id>/<version>/   config.json + model.safetensors, as trained (never changed)
    <pair>/gts/<gt_id>/                     the version in service: what `models.upgrade.resolve_gt` finds

A version's id is the first 12 hex digits of its weights' sha256, the `gt_version` every delta records, so
a GT folder from before versions (the shipped ones) has a version too. Activation copies the version's files
into a staging folder and renames it over gts/<gt_id>, so a reader sees the old GT or the new one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path

from models.errors import ConfigError, NotFoundError
from models.gt.checkpoint import read_config, save_gt
from models.gt.network import GradientTransformer
from models.pairs import Pair, locked
from models.training.shadow import ShadowSet

FILES = ("config.json", "model.safetensors")
OPTIONAL = ("reference.safetensors",)  # the shadow runs' reference (models/gt/reference.py), where saved
GT_ID = re.compile(r"^[a-z0-9][a-z0-9_.@-]{0,63}$")
VERSION = re.compile(r"^[0-9a-f]{12}$")


def versions_dir(pair: Pair, gt_id: str) -> Path:
    return pair.root / "gt_versions" / gt_id


def version_of(config: dict) -> str:
    """A GT's version, from its config.json contents."""
    return config["weights_sha256"][:12]


def save_version(model: GradientTransformer, pair: Pair, gt_id: str, meta: dict, data: ShadowSet | None = None
                 ) -> str:
    """Store a trained GT (with the reference of its shadow runs `data`) as a new version of `gt_id` (not in
    service); returns its version."""
    if not GT_ID.match(gt_id) or ".." in gt_id:
        raise ConfigError(f"GT id {gt_id!r}: use lower-case letters, digits, '.', '-', '_' or '@'")
    root = versions_dir(pair, gt_id)
    staging = save_gt(model, root / f".new-{secrets.token_hex(4)}", meta, data)
    version = version_of(read_config(staging))
    try:
        os.rename(staging, root / version)
    except OSError:  # the same weights were stored before: one copy is enough
        shutil.rmtree(staging)
    return version


def list_versions(pair: Pair, gt_id: str) -> list[dict]:
    """Every stored version of `gt_id` (and the one in service, if it predates versions), newest first,
    each with its config (without the training history) and whether it is active."""
    active = active_version(pair, gt_id)
    root = versions_dir(pair, gt_id)
    folders = [p for p in root.iterdir() if (p / "config.json").is_file() and not p.name.startswith(".")] \
        if root.is_dir() else []
    folders.sort(key=lambda p: (p / "config.json").stat().st_mtime_ns, reverse=True)
    rows = [_row(read_config(p), active) for p in folders]
    if active is not None and active not in {row["version"] for row in rows}:
        rows.append(_row(read_config(pair.gt_dir(gt_id)), active))
    return rows


def _row(config: dict, active: str | None) -> dict:
    version = version_of(config)
    summary = {k: v for k, v in config.items() if k not in ("history", "gt", "card")}
    return {"version": version, "active": version == active, "config": summary, "card": config.get("card")}


def active_version(pair: Pair, gt_id: str) -> str | None:
    """The version in service under `gt_id`, or None when there is none."""
    try:
        return version_of(read_config(pair.gt_dir(gt_id)))
    except NotFoundError:
        return None


def activate(pair: Pair, gt_id: str, version: str) -> None:
    """Put a stored version of `gt_id` in service (the GT upgrades on its task use from now on)."""
    if not GT_ID.match(gt_id) or ".." in gt_id or not VERSION.match(version):
        raise NotFoundError(f"GT {gt_id!r} of pair {pair.id!r} has no version {version!r}")
    source = versions_dir(pair, gt_id) / version
    if not (source / "config.json").is_file():
        raise NotFoundError(f"GT {gt_id!r} of pair {pair.id!r} has no version {version!r}")
    target = pair.gt_dir(gt_id)
    with locked(pair.root / "gts" / f".{gt_id}.lock"):
        staging = target.with_name(f".{gt_id}.{secrets.token_hex(4)}.activating")
        staging.mkdir(parents=True)
        for name in FILES:
            shutil.copyfile(source / name, staging / name)
        for name in OPTIONAL:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
        config = json.loads((staging / "config.json").read_text())
        (staging / "config.json").write_text(json.dumps({**config, "version": version}, indent=2, sort_keys=True))
        if target.exists():
            old = target.with_name(f".{gt_id}.{secrets.token_hex(4)}.old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
