"""Checkpoints in, upgrades followed, deltas out: the service's resources as the command line uses them."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.client.download import fetch
from app.client.http import Api, ClientError

ADAPTER = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
METADATA = "gradlift.json"  # written by `gradlift finetune` beside the adapter; names the pair
TERMINAL = ("succeeded", "failed", "cancelled")


def upload(api: Api, path: Path, pair: str | None, prompts: Path | None = None) -> dict[str, Any]:
    """Upload an adapter folder (or its adapter_model.safetensors); the pair comes from its metadata if not given.
    `prompts`: a JSONL file of unlabelled prompts (the organization's question format) to attach."""
    folder, weights = (path, path / ADAPTER) if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise ClientError(f"no {ADAPTER} at {path}")
    if pair is None and (folder / METADATA).is_file():
        pair = json.loads((folder / METADATA).read_text()).get("pair")
    if not pair:
        raise ClientError(f"which pair is {path} for? pass --pair (no {METADATA} beside it names one)")
    with ExitStack() as stack:
        files = {"file": (ADAPTER, stack.enter_context(open(weights, "rb")), "application/octet-stream")}
        if (folder / CONFIG).is_file():
            files["config"] = (CONFIG, stack.enter_context(open(folder / CONFIG, "rb")), "application/json")
        if prompts is not None:
            if not prompts.is_file():
                raise ClientError(f"no prompts file at {prompts}")
            files["prompts"] = (prompts.name, stack.enter_context(open(prompts, "rb")), "application/jsonl")
        return api.post("/v1/checkpoints", data={"pair": pair}, files=files)


def create_upgrade(api: Api, checkpoint_ids: list[str], pair: str | None, task: str | None,
                   mode: str = "auto") -> dict[str, Any]:
    """Queue an upgrade; the pair defaults to the first checkpoint's."""
    if pair is None:
        pair = api.get(f"/v1/checkpoints/{checkpoint_ids[0]}")["pair"]
    body = {"pair": pair, "task": task, "checkpoint_ids": checkpoint_ids, "mode": mode}
    return api.post("/v1/upgrades", json=body)


def describe_quality(job: dict[str, Any]) -> str:
    """One line on how much to trust the upgrade's delta."""
    quality = job.get("quality")
    if not quality:
        return "quality: not reported"
    made = f"{quality['mode']} update"
    if (quality.get("distill") or {}).get("start") == "gt":
        made += ", started from the GT's"
    return f"quality: {quality['verdict']} ({made}; {quality['reason']})"


def follow(api: Api, upgrade_id: str, timeout_s: float | None) -> int:
    """`watch` for the command line: the delta id on stdout when the upgrade succeeds; exit status 0."""
    job = watch(api, upgrade_id, timeout_s)
    print(describe_quality(job), file=sys.stderr)
    print(f"upgrade {upgrade_id} succeeded; the LLM adapter (download it with `gradlift download ID --out DIR`):")
    print(job["delta_id"])
    return 0


def watch(api: Api, upgrade_id: str, timeout_s: float | None = None, interval_s: float = 0.5,
          progress: bool = True) -> dict[str, Any]:
    """Follow an upgrade's events with a progress bar until it ends; ClientError unless it succeeded."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = 0
    job = api.get(f"/v1/upgrades/{upgrade_id}")  # an unknown id fails here, before a bar is drawn
    with tqdm(total=100, unit="%", desc=job["status"], disable=not progress,
              bar_format="{desc:<28}{percentage:3.0f}%|{bar}| {elapsed}") as bar:
        while True:
            for event in api.get(f"/v1/upgrades/{upgrade_id}/events", after=last)["data"]:
                last = event["id"]
                # The stage and its own percentage drawn together (a description set first would be drawn
                # beside the previous stage's percentage).
                bar.set_description_str(event["stage"][:27], refresh=False)
                bar.update(max(0.0, 100 * event["progress"] - bar.n))
                bar.refresh()
            if job["status"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"upgrade {upgrade_id} is still {job['status']} after {timeout_s:.0f}s; "
                                  f"follow it again with `gradlift watch {upgrade_id}`")
            time.sleep(interval_s)
            job = api.get(f"/v1/upgrades/{upgrade_id}")
        if job["status"] == "succeeded":
            bar.update(100 - bar.n)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        why = f"{error.get('message') or 'no reason given'} ({error.get('code', job['status'])})"
        raise ClientError(f"upgrade {upgrade_id} {job['status']}: {why}")
    return job


def download_delta(api: Api, delta_id: str, out_dir: Path, progress: bool = True) -> Path:
    """The delta's PEFT folder (each file resumed if interrupted, checked against its sha256) + its metadata."""
    delta = api.get(f"/v1/deltas/{delta_id}")
    for item in delta["files"]:
        name = Path(item["name"]).name  # the service names plain files; never a path out of out_dir
        fetch(api, f"/v1/deltas/{delta_id}/files/{name}", out_dir / name, item["sha256"], progress=progress)
    (out_dir / METADATA).write_text(json.dumps(delta, indent=2, sort_keys=True))
    return out_dir
