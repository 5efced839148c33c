"""End to end over real HTTP: the `gradlift` command, a uvicorn server, Celery worker processes, a real
database and broker; an adapter fine-tuned on the toy pair goes in, a working LLM adapter comes out."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import httpx
import pytest
import torch

from tests.e2e.services import Services, wait_for
from tests.e2e.stalling_worker import STAGE

pytestmark = pytest.mark.slow
TERMINAL = ("succeeded", "failed", "cancelled")
PROBE = "rot ?: abcde #### "


def upload(client: httpx.Client, adapter_dir: Path) -> dict:
    files = {"file": ("adapter_model.safetensors", (adapter_dir / "adapter_model.safetensors").read_bytes()),
             "config": ("adapter_config.json", (adapter_dir / "adapter_config.json").read_bytes())}
    response = client.post("/v1/checkpoints", data={"pair": "toy"}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


def wait_finished(client: httpx.Client, job_id: str, services: Services, timeout_s: float = 240) -> dict:
    def finished() -> dict | None:
        job = client.get(f"/v1/upgrades/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    try:
        return wait_for(finished, timeout_s, f"upgrade {job_id}", interval_s=0.5)
    except TimeoutError:
        logs = "\n".join(f"--- {name}\n{services.log_tail(name)}" for name in ("serve", "api", "worker"))
        raise AssertionError(f"{client.get(f'/v1/upgrades/{job_id}').json()}\n{logs}") from None


def download(client: httpx.Client, delta: dict, out: Path) -> Path:
    """The delta's files, each checked against its sha256 and ETag; one range request too."""
    out.mkdir(parents=True)
    for item in delta["files"]:
        response = client.get(f"/v1/deltas/{delta['id']}/files/{item['name']}")
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == item["sha256"]
        assert response.headers["etag"] == f'"{item["sha256"]}"'
        (out / item["name"]).write_bytes(response.content)
    url = f"/v1/deltas/{delta['id']}/files/adapter_model.safetensors"
    part = client.get(url, headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == (out / "adapter_model.safetensors").read_bytes()[:8]
    return out


def assert_changes_the_llm(pairs_dir: Path, adapter_dir: Path) -> None:
    from peft import PeftModel

    from models.pairs import PairStore

    pair = PairStore(pairs_dir).get("toy")
    tokenizer = pair.load_tokenizer("llm")
    inputs = tokenizer(PROBE, return_tensors="pt")
    model = pair.load_model("llm")
    with torch.no_grad():
        base = model(**inputs).logits
        upgraded = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
        lifted = upgraded(**inputs).logits
    assert not torch.allclose(base, lifted, atol=1e-4), "the downloaded adapter does not change the LLM"


@pytest.fixture(params=["embedded", "postgres+redis"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path, toy_pairs_dir: Path) -> dict[str, str]:
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir)}
    if request.param == "postgres+redis":
        broker, queue = request.getfixturevalue("redis_broker")
        env |= {"GRADLIFT_DATABASE_URL": request.getfixturevalue("postgres_url"),
                "GRADLIFT_BROKER_URL": broker, "GRADLIFT_UPGRADE_QUEUE": queue}
    return env


def test_upgrade_end_to_end(backend_env: dict[str, str], toy_pairs_dir: Path, toy_adapter: Path,
                            tmp_path: Path) -> None:
    with Services(backend_env, tmp_path / "logs") as services:
        services.serve()
        client = services.client(services.make_key("acme"))
        assert client.get("/readyz").json()["status"] == "ok"
        checkpoint = upload(client, toy_adapter)
        created = client.post("/v1/upgrades", json={"pair": "toy", "checkpoint_ids": [checkpoint["id"]]})
        assert created.status_code == 200, created.text
        job = wait_finished(client, created.json()["id"], services)
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["delta_id"] and len(job["events"]) >= 3
        delta = client.get(f"/v1/deltas/{job['delta_id']}").json()
        assert delta["sources"] == [{"id": checkpoint["id"], "sha256": checkpoint["sha256"]}]
        assert {f["name"] for f in delta["files"]} == {"adapter_config.json", "adapter_model.safetensors",
                                                      "update.safetensors"}
        adapter_dir = download(client, delta, tmp_path / "downloaded")
    assert_changes_the_llm(toy_pairs_dir, adapter_dir)


def test_restarts_cancel_and_a_killed_workers_job(backend_env: dict[str, str], toy_adapter: Path,
                                                  tmp_path: Path) -> None:
    """The API killed with jobs queued loses nothing; a running job can be cancelled; a job whose worker
    is SIGKILLed mid-run is finished by the next worker, with exactly one delta (on either backend)."""
    env = backend_env | {"GRADLIFT_JOB_LEASE_S": "3"}
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        client = services.client(services.make_key("acme"))
        checkpoint = upload(client, toy_adapter)
        body = {"pair": "toy", "checkpoint_ids": [checkpoint["id"]]}
        to_cancel, to_kill = (client.post("/v1/upgrades", json=body).json()["id"] for _ in range(2))

        services.stop("api", signal.SIGKILL)  # the API dies with two jobs queued and an upload stored
        services.api()
        assert client.get(f"/v1/checkpoints/{checkpoint['id']}").json()["sha256"] == checkpoint["sha256"]
        statuses = [client.get(f"/v1/upgrades/{j}").json()["status"] for j in (to_cancel, to_kill)]
        assert statuses == ["queued", "queued"]

        services.worker("stalling", "tests.e2e.stalling_worker")
        wait_stage(client, to_cancel, STAGE)
        assert client.post(f"/v1/upgrades/{to_cancel}/cancel").status_code == 200
        wait_stage(client, to_cancel, "cancelled")
        wait_stage(client, to_kill, STAGE)
        services.stop("stalling", signal.SIGKILL)  # the worker dies mid-job

        services.worker()
        job = wait_finished(client, to_kill, services)
        assert job["status"] == "succeeded" and job["attempts"] == 2, job
        # Requeued by the sweeper ("worker lost"), or claimed anew by a copy of its message that the sweeper
        # sent while it waited behind the other job: a claim takes a running job whose lease ran out.
        assert [e["stage"] for e in job["events"]].count("starting") == 2
        deltas = client.get("/v1/deltas").json()
        assert deltas["count"] == 1 and deltas["data"][0]["upgrade_id"] == to_kill


def wait_stage(client: httpx.Client, job_id: str, stage: str, timeout_s: float = 120) -> None:
    wait_for(lambda: client.get(f"/v1/upgrades/{job_id}").json()["stage"] == stage, timeout_s,
             f"upgrade {job_id} to reach stage {stage!r}")
