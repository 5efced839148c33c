"""The provider's side end to end over real HTTP, on PostgreSQL and Redis with real worker processes: an admin
adds a task from JSONL files, builds its shadow runs with two training workers (one SIGKILLed mid-build),
trains and activates a GT; an organization's upgrade on the new task then makes the LLM answer the task's
test questions better than the base LLM, through the chat endpoint."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.services import BIN, REPO, Services, wait_for
from tests.e2e.test_service import TERMINAL, upload

pytestmark = pytest.mark.slow
TASK = "sep-four"  # separate every letter with "4": a key no toy task uses, written as data files
RUNS, CHUNK = 6, 2
BUILD = {"pair": "toy", "task": TASK, "runs": RUNS, "chunk_size": CHUNK, "steps": 60, "subset_size": 200,
         "keep_last": 4, "batch_size": 16}


def task_files(root: Path) -> dict[str, Path]:
    """Public, private (the organization's) and test examples of the task, disjoint, as JSONL."""
    from models.data.tasks import get_task, make_splits

    splits = make_splits(get_task("separate-4"), 600, 300, 30, seed=7)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, examples in (("public", splits.public), ("private", splits.private), ("test", splits.test)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in examples))
    return files


def gradlift(services: Services, key: str, *args: object) -> str:
    """The admin's command line: its last line."""
    env = {k: v for k, v in services.env.items() if not k.startswith("GRADLIFT_")}
    env |= {"GRADLIFT_URL": services.base_url, "GRADLIFT_API_KEY": key}
    done = subprocess.run([str(BIN / "gradlift"), *map(str, args)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


def wait_done(client: httpx.Client, path: str, services: Services, timeout_s: float = 600) -> dict:
    def finished() -> dict | None:
        row = client.get(path).json()
        return row if row["status"] in TERMINAL else None

    try:
        return wait_for(finished, timeout_s, path, interval_s=0.5)
    except TimeoutError:
        logs = "\n".join(f"--- {n}\n{services.log_tail(n)}" for n in ("api", "train-a", "train-b", "worker"))
        raise AssertionError(f"{client.get(path).json()}\n{logs}") from None


def accuracy(client: httpx.Client, model: str, examples: list[dict]) -> float:
    right = 0
    for example in examples:
        body = {"model": model, "temperature": 0, "max_tokens": len(example["answer"]) + 2,
                "messages": [{"role": "user", "content": example["prompt"]}]}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        right += response.json()["choices"][0]["message"]["content"].strip() == example["answer"]
    return right / len(examples)


@pytest.fixture
def env(tmp_path: Path, toy_copy_dir: Path, postgres_url: str, redis_broker: tuple[str, str]) -> dict[str, str]:
    broker, queue = redis_broker
    return {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(toy_copy_dir),
            "GRADLIFT_DATABASE_URL": postgres_url, "GRADLIFT_BROKER_URL": broker, "GRADLIFT_UPGRADE_QUEUE": queue,
            "GRADLIFT_TRAIN_QUEUE": f"{queue}-train", "GRADLIFT_JOB_LEASE_S": "3"}


def test_a_provider_adds_a_task_builds_trains_and_an_organization_upgrades_on_it(
        env: dict[str, str], toy_copy_dir: Path, tmp_path: Path) -> None:
    files = task_files(tmp_path / "task")
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        admin_key = services.run([str(BIN / "gradlift"), "keys", "create", "--org", "provider", "--admin"]
                                 ).strip().splitlines()[-1]
        org_key = services.make_key("acme")
        admin, org = services.client(admin_key), services.client(org_key)
        assert org.get("/v1/admin/tasks").status_code == 403

        assert gradlift(services, admin_key, "admin", "task", "add", "--pair", "toy", "--id", TASK,
                        "--public", files["public"], "--test", files["test"]) == TASK
        build = admin.post("/v1/admin/shadow-builds", json=BUILD).json()
        assert (build["status"], build["chunks"]) == ("queued", {"queued": RUNS // CHUNK}), build

        services.start("train-a", [str(BIN / "python"), "-m", "workers", "--train"])
        path = f"/v1/admin/shadow-builds/{build['id']}"
        wait_for(lambda: admin.get(path).json()["chunks"].get("running"), 120, "worker a to take a chunk")
        services.start("train-b", [str(BIN / "python"), "-m", "workers", "--train"])
        assert admin.get(path).json()["done"] < RUNS
        services.stop("train-a", signal.SIGKILL)  # mid-chunk: its runs are lost, the others' are not

        build = wait_done(admin, path, services)
        assert (build["status"], build["done"], build["total"]) == ("succeeded", RUNS, RUNS), build
        assert any("worker lost" in e["message"] for e in build["events"]), build["events"]
        folder = toy_copy_dir / "toy" / "shadow" / TASK / build["plan_key"]
        assert sorted(p.name for p in folder.iterdir()) == [f"{i:04d}.safetensors" for i in range(RUNS)]

        flags = [f"--{k.replace('_', '-')}={v}" for k, v in BUILD.items()]
        again = gradlift(services, admin_key, "admin", "shadow", "build", *flags, "--watch")
        assert admin.get(f"/v1/admin/shadow-builds/{again}").json()["reused"] == RUNS  # nothing trained twice

        version = gradlift(services, admin_key, "admin", "gt", "train", "--pair", "toy", "--task", TASK,
                           "--steps", "60", "--d-model", "32", "--max-test", "20", "--watch")
        training = admin.get("/v1/admin/gt-trainings").json()["data"][0]
        assert training["version"] == version and training["card"]["summary"]["heldout_runs"] >= 1
        task_gt = lambda: {t["id"]: t for t in org.get("/v1/pairs/toy").json()["task_details"]}[TASK]["gt"]  # noqa: E731
        assert task_gt() is None  # nothing serves the task before activation
        assert gradlift(services, admin_key, "admin", "gt", "activate", "--pair", "toy", "--gt", TASK,
                        "--version", version) == version
        assert task_gt()["version"] == version and task_gt()["card_summary"]["heldout_runs"] >= 1

        delta = organization_upgrades(services, org, files["private"], tmp_path)
        assert delta["gt_id"] == TASK and delta["gt_version"] == version
        test = [json.loads(line) for line in files["test"].read_text().splitlines()]
        lifted, base = accuracy(org, delta["id"], test), accuracy(org, "toy-llm", test)
        assert lifted > base + 0.2, (lifted, base)


def organization_upgrades(services: Services, org: httpx.Client, private: Path, tmp_path: Path) -> dict:
    """An organization fine-tunes the TinyLM on its own data, uploads it, upgrades on the task: the delta."""
    from models.data.datafile import read_examples
    from models.pairs import PairStore
    from models.training.finetune import FinetuneConfig, TinySource, finetune_to_folder

    pair = PairStore(services.env["GRADLIFT_PAIRS_DIR"]).get("toy")
    adapter = finetune_to_folder(TinySource.of(pair), read_examples(private), tmp_path / "adapter",
                                 FinetuneConfig(steps=60, batch_size=16))
    services.worker()
    checkpoint = upload(org, adapter)
    job = org.post("/v1/upgrades", json={"pair": "toy", "task": TASK, "checkpoint_ids": [checkpoint["id"]]})
    assert job.status_code == 200, job.text
    job = wait_done(org, f"/v1/upgrades/{job.json()['id']}", services)
    assert job["status"] == "succeeded", job
    return org.get(f"/v1/deltas/{job['delta_id']}").json()
