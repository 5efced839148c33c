"""Creating, reading and cancelling upgrades through the API (no worker runs here: jobs stay queued)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save

from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import assert_error
from tests.app.api.test_checkpoints import adapter, upload


@pytest.fixture
def checkpoint_id(toy_api: Api, toy_pairs_dir: Path) -> str:
    init = load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))
    return upload(toy_api, save(adapter(init))).json()["id"]


def create(api: Api, body: dict, org: str = "acme", key: str | None = None):  # noqa: ANN201
    headers = api.auth(org) | ({"Idempotency-Key": key} if key else {})
    return api.client.post("/v1/upgrades", headers=headers, json=body)


def test_create_read_cancel(toy_api: Api, checkpoint_id: str) -> None:
    response = create(toy_api, {"pair": "toy", "checkpoint_ids": [checkpoint_id]})
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["progress"], job["gt_id"], job["delta_id"]) == ("queued", 0.0, "all", None)
    assert job["checkpoint_ids"] == [checkpoint_id] and job["events"][0]["stage"] == "queued"
    got = toy_api.client.get(f"/v1/upgrades/{job['id']}", headers=toy_api.auth()).json()
    assert got == job
    events = toy_api.client.get(f"/v1/upgrades/{job['id']}/events", headers=toy_api.auth()).json()
    assert events["count"] == 1
    assert toy_api.client.get("/v1/upgrades", headers=toy_api.auth()).json()["count"] == 1
    # In use by a queued job: the checkpoint cannot be deleted yet.
    assert_error(toy_api.client.delete(f"/v1/checkpoints/{checkpoint_id}", headers=toy_api.auth()), 409,
                 "conflict")
    cancelled = toy_api.client.post(f"/v1/upgrades/{job['id']}/cancel", headers=toy_api.auth()).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    again = toy_api.client.post(f"/v1/upgrades/{job['id']}/cancel", headers=toy_api.auth())
    assert_error(again, 409, "conflict")


def test_a_task_uses_its_own_gt_or_the_pairs_all_task_gt(toy_api: Api, checkpoint_id: str,
                                                          toy_pairs_dir: Path) -> None:
    from models.pairs import PairStore

    task = PairStore(toy_pairs_dir).get("toy").spec.tasks[0]
    job = create(toy_api, {"pair": "toy", "task": task, "checkpoint_ids": [checkpoint_id]}).json()
    assert job["task"] == task and job["gt_id"] in (task, "all")
    body = {"pair": "toy", "task": "no-such-task", "checkpoint_ids": [checkpoint_id]}
    unknown = create(toy_api, body | {"mode": "gt"})
    assert "no-such-task" in assert_error(unknown, 422, "no_gradient_transformer")["message"]
    # A task no GT covers is still upgraded, by distillation, unless the caller insists on a GT.
    auto = create(toy_api, body).json()
    assert (auto["mode"], auto["gt_id"], auto["status"]) == ("auto", None, "queued")
    assert "no GT covers it" in auto["events"][0]["message"]
    distill = create(toy_api, {"pair": "toy", "task": task, "checkpoint_ids": [checkpoint_id], "mode": "distill"})
    assert (distill.json()["mode"], distill.json()["gt_id"]) == ("distill", None)


def test_prompts_come_from_the_request_or_the_checkpoint(toy_api: Api, toy_pairs_dir: Path) -> None:
    init = load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))
    lines = b'{"prompt": "rot ?: abcde #### "}\n\n{"messages": [{"role": "user", "content": "rot ?: xyz #### "}]}\n'
    with_prompts = upload(toy_api, save(adapter(init)), prompts=lines).json()
    assert with_prompts["prompts_count"] == 2
    plain = upload(toy_api, save(adapter(init, seed=2))).json()
    assert plain["prompts_count"] is None
    inherited = create(toy_api, {"pair": "toy", "checkpoint_ids": [with_prompts["id"]]}).json()
    assert inherited["prompts_count"] == 2 and inherited["quality"] is None
    own = create(toy_api, {"pair": "toy", "checkpoint_ids": [plain["id"]], "prompts": ["a ?: b #### "] * 3})
    assert own.json()["prompts_count"] == 3
    none = create(toy_api, {"pair": "toy", "checkpoint_ids": [plain["id"]]}).json()
    assert none["prompts_count"] is None
    assert_error(create(toy_api, {"pair": "toy", "checkpoint_ids": [plain["id"]], "prompts": [" "]}), 422,
                 "invalid_prompts")
    # Refused by the schema or by the handler, a bad prompts list is the one code.
    assert_error(create(toy_api, {"pair": "toy", "checkpoint_ids": [plain["id"]], "prompts": []}), 422,
                 "invalid_prompts")
    bad = upload(toy_api, save(adapter(init, seed=3)), prompts=b'{"prompt": "ok"}\nnot json\n{"answer": "x"}\n')
    message = assert_error(bad, 422, "invalid_prompts")["message"]
    assert "line 2" in message and "line 3" in message
    turns = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    answered = upload(toy_api, save(adapter(init, seed=3)), prompts=turns)
    assert "no answers" in assert_error(answered, 422, "invalid_prompts")["message"]
    assert toy_api.client.get("/v1/checkpoints", headers=toy_api.auth()).json()["count"] == 2


def test_bad_upgrade_requests(toy_api: Api, checkpoint_id: str) -> None:
    unknown = create(toy_api, {"pair": "toy", "checkpoint_ids": [checkpoint_id, "ckpt_nope"]})
    error = assert_error(unknown, 404, "checkpoint_not_found")
    assert error["param"] == "checkpoint_ids.1" and "ckpt_nope" in error["message"]
    assert_error(create(toy_api, {"pair": "toy", "checkpoint_ids": [checkpoint_id]}, org="globex"), 404,
                 "checkpoint_not_found")
    assert_error(create(toy_api, {"pair": "nope", "checkpoint_ids": [checkpoint_id]}), 404, "pair_not_found")
    twice = create(toy_api, {"pair": "toy", "checkpoint_ids": [checkpoint_id] * 2})
    assert_error(twice, 400, "invalid_request")
    assert_error(create(toy_api, {"pair": "toy", "checkpoint_ids": []}), 422, "invalid_request")
    assert toy_api.client.get("/v1/upgrades", headers=toy_api.auth()).json()["count"] == 0


def test_idempotency_key(toy_api: Api, checkpoint_id: str) -> None:
    body = {"pair": "toy", "checkpoint_ids": [checkpoint_id]}
    first = create(toy_api, body, key="retry-1").json()
    assert create(toy_api, body, key="retry-1").json()["id"] == first["id"]
    assert_error(create(toy_api, body | {"task": "other"}, key="retry-1"), 409, "idempotency_key_reused")
    # Scoped per organization: another one's "retry-1" is not a replay of acme's job (it may not see it),
    # and its own upgrade under that key is a new job.
    assert_error(create(toy_api, body, key="retry-1", org="globex"), 404, "checkpoint_not_found")
    init = load_file(str(toy_api.settings.pairs_dir / "toy" / "tiny_lora_init.safetensors"))
    theirs = upload(toy_api, save(adapter(init)), org="globex").json()["id"]
    other = create(toy_api, {"pair": "toy", "checkpoint_ids": [theirs]}, key="retry-1", org="globex").json()
    assert other["id"] != first["id"] and other["checkpoint_ids"] == [theirs]
    assert toy_api.client.get("/v1/upgrades", headers=toy_api.auth()).json()["count"] == 1


@pytest.fixture
def dp_api(service_env, dp_pairs_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    from tests.app.api.conftest import _api
    from tests.conftest import use_settings

    yield from _api(use_settings(monkeypatch, pairs_dir=str(dp_pairs_dir)))


def test_a_dp_upload_is_upgraded_by_the_gt_of_matching_dp_shadow_runs(dp_api: Api, dp_pairs_dir: Path) -> None:
    import json

    from tests.conftest import DP_GT

    init = load_file(str(dp_pairs_dir / "toy" / "tiny_lora_init.safetensors"))
    record = {"pair": "toy", "privacy": {"dp_sgd": {"epsilon": 2.0, "delta": 1e-5, "clip": 1.0,
                                                    "epsilon_spent": 1.97}, "update_noise": None}}
    private = upload(dp_api, save(adapter(init), metadata={"gradlift": json.dumps(record)})).json()
    assert private["privacy"] == {"dp_sgd": record["privacy"]["dp_sgd"]}
    plain = upload(dp_api, save(adapter(init, seed=1))).json()
    assert plain["privacy"] is None
    assert create(dp_api, {"pair": "toy", "checkpoint_ids": [private["id"]]}).json()["gt_id"] == DP_GT
    assert create(dp_api, {"pair": "toy", "checkpoint_ids": [plain["id"]]}).json()["gt_id"] == "all"
    # Several uploads: the GT matches the most private of them.
    assert create(dp_api, {"pair": "toy", "checkpoint_ids": [plain["id"], private["id"]]}).json()["gt_id"] == DP_GT
    unreadable = upload(dp_api, save(adapter(init, seed=2), metadata={"gradlift": "{oops"}))
    assert "metadata is not JSON" in assert_error(unreadable, 422, "invalid_adapter")["message"]


def test_a_retry_answers_as_the_upgrade_is_now(toy_api: Api, checkpoint_id: str) -> None:
    body = {"pair": "toy", "checkpoint_ids": [checkpoint_id]}
    first = create(toy_api, body, key="u1").json()
    assert toy_api.client.post(f"/v1/upgrades/{first['id']}/cancel", headers=toy_api.auth()).status_code == 200
    again = create(toy_api, body, key="u1").json()
    assert again["id"] == first["id"] and (first["status"], again["status"]) == ("queued", "cancelled")
