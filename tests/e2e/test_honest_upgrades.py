"""Honest upgrades over real HTTP with a real worker: an upload of a key no GT was trained on is flagged
under `mode: gt` and distilled under `auto` (from the init and from the GT's update; the one closer to the
TinyLM delivered) into an LLM that answers the task clearly better than the base LLM (asked through the chat
endpoint); an upload of a task the GT knows gets `ok` and the GT's update."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import KNOWN_TASKS, UNSEEN_TASK
from tests.e2e.services import Services
from tests.e2e.test_service import upload, wait_finished

pytestmark = pytest.mark.slow
QUESTIONS = 60


def upgrade(client: httpx.Client, services: Services, checkpoint: str, mode: str) -> tuple[dict, dict]:
    created = client.post("/v1/upgrades", json={"pair": "toy", "checkpoint_ids": [checkpoint], "mode": mode})
    assert created.status_code == 200, created.text
    job = wait_finished(client, created.json()["id"], services)
    assert job["status"] == "succeeded", job
    delta = client.get(f"/v1/deltas/{job['delta_id']}").json()
    assert job["quality"] == delta["quality"] and delta["quality"]["mode"] == delta["mode"]
    return job, delta


def accuracy(client: httpx.Client, model: str, task: str) -> float:
    """Exact answers to the task's test questions through /v1/chat/completions."""
    from models.data.tasks import get_task, make_splits

    test = make_splits(get_task(task)).test[:QUESTIONS]
    right = 0
    for example in test:
        reply = client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": example.prompt}],
            "max_tokens": len(example.answer) + 2, "temperature": 0}).json()
        right += reply["choices"][0]["message"]["content"].strip() == example.answer
    return right / len(test)


def own_prompts(path: Path, task: str) -> Path:
    """The organization's question format: its task's prompts, without answers (the provider sees these)."""
    from models.data.tasks import get_task, make_splits

    prompts = [e.prompt for e in make_splits(get_task(task)).public[:1600]]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_honest_upgrades(honest_pairs_dir: Path, recipe_adapters: dict[str, Path], tmp_path: Path) -> None:
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(honest_pairs_dir)}
    with Services(env, tmp_path / "logs") as services:
        services.serve()
        client = services.client(services.make_key("acme"))
        unseen = upload(client, recipe_adapters[UNSEEN_TASK])

        _, flagged = upgrade(client, services, unseen["id"], "gt")
        assert flagged["mode"] == "gt" and flagged["quality"]["verdict"] != "ok", flagged["quality"]
        assert flagged["quality"]["similarity"]["nearest_task"] in KNOWN_TASKS

        prompts = own_prompts(tmp_path / "prompts.jsonl", UNSEEN_TASK)
        files = {"file": ("adapter_model.safetensors",
                          (recipe_adapters[UNSEEN_TASK] / "adapter_model.safetensors").read_bytes()),
                 "prompts": ("prompts.jsonl", prompts.read_bytes())}
        with_prompts = client.post("/v1/checkpoints", data={"pair": "toy"}, files=files).json()
        assert with_prompts["prompts_count"] == 1600
        job, distilled = upgrade(client, services, with_prompts["id"], "auto")
        quality = distilled["quality"]
        candidates = {c["made_by"]: c["gain"] for c in quality["candidates"]}
        assert {"distill:init", "gt"} <= set(candidates) and quality["gain"] == max(candidates.values()), quality
        start = quality["distill"]["start"]
        assert (distilled["mode"], distilled["gt_id"]) == ("distill", "all" if start == "gt" else None), distilled
        assert quality["agreement"]["prompts"] == "organization"
        messages = " ".join(e["message"] for e in job["events"])
        assert "distilling instead" in messages and f"delivering distill:{start}" in messages
        assert quality["verdict"] in messages
        base, lifted = accuracy(client, "toy-llm", UNSEEN_TASK), accuracy(client, distilled["id"], UNSEEN_TASK)
        assert lifted >= base + 0.2, (base, lifted)

        known = upload(client, recipe_adapters[KNOWN_TASKS[0]])
        _, trusted = upgrade(client, services, known["id"], "auto")
        assert (trusted["mode"], trusted["gt_id"], trusted["quality"]["verdict"]) == ("gt", "all", "ok"), trusted
        assert trusted["quality"]["similarity"]["nearest_task"] == KNOWN_TASKS[0]
