"""The provider's routes on the real app, a real SQLite database and the embedded broker (no workers here:
tests/workers and tests/e2e run the jobs)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import queries
from app.db.session import session_scope
from app.db.tables import ShadowChunk
from app.main import create_app
from tests.app.api.conftest import Api, _api
from tests.conftest import use_settings

LINES = [json.dumps({"prompt": f"add {a} {a + 1} #### ", "answer": str(2 * a + 1)}) + "\n" for a in range(60)]
ROWS, TEST = "".join(LINES), "".join(LINES[:4])


@pytest.fixture
def admin_api(service_env, toy_copy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from _api(use_settings(monkeypatch, pairs_dir=str(toy_copy_dir), max_upload_bytes=str(64 * 1024)))


def admin(api: Api) -> dict[str, str]:
    if "provider" not in api.keys:
        with session_scope() as session:
            _, api.keys["provider"] = queries.create_key(session, "provider", admin=True)
    return {"Authorization": f"Bearer {api.keys['provider']}"}


def add_task(api: Api, task_id: str = "sums", public: str = ROWS, test: str | None = TEST, **fields: str):
    files = {"public": ("public.jsonl", public.encode())} | ({"test": ("t.jsonl", test.encode())} if test else {})
    return api.client.post("/v1/admin/tasks", headers=admin(api), files=files,
                           data={"pair": "toy", "id": task_id, **fields})


def admin_routes() -> list[tuple[str, str]]:
    """Every admin route, as the OpenAPI document lists it (so each is in the document too)."""
    paths = create_app().openapi()["paths"]
    return sorted((method.upper(), path) for path, ops in paths.items() if path.startswith("/v1/admin")
                  for method in ops)


def test_every_admin_route_answers_an_organization_key_403_and_no_key_401(admin_api: Api):
    routes = admin_routes()
    assert len(routes) >= 12 and {r for _, r in routes} >= {"/v1/admin/tasks", "/v1/admin/shadow-builds",
                                                             "/v1/admin/gt-trainings"}
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "x", path)
        assert admin_api.client.request(method, url, headers=admin_api.auth("acme")).status_code == 403, url
        assert admin_api.client.request(method, url).status_code == 401, url
    body = admin_api.client.get("/v1/admin/tasks", headers=admin_api.auth("acme")).json()
    assert body["error"]["code"] == "permission_denied" and "--admin" in body["error"]["message"]


def test_an_admin_key_sees_no_organizations_checkpoints(admin_api: Api, toy_adapter: Path):
    files = {"file": ("adapter_model.safetensors", (toy_adapter / "adapter_model.safetensors").read_bytes())}
    made = admin_api.client.post("/v1/checkpoints", headers=admin_api.auth("acme"), files=files,
                                 data={"pair": "toy"}).json()
    assert admin_api.client.get("/v1/checkpoints", headers=admin(admin_api)).json()["count"] == 0
    assert admin_api.client.get(f"/v1/checkpoints/{made['id']}", headers=admin(admin_api)).status_code == 404
    assert admin_api.client.get("/v1/deltas", headers=admin(admin_api)).json()["count"] == 0
    assert admin_api.client.get("/v1/upgrades", headers=admin(admin_api)).json()["count"] == 0


def test_a_task_from_jsonl_files(admin_api: Api):
    created = add_task(admin_api)
    assert created.status_code == 201, created.text
    assert created.json() | {} == {"id": "sums", "object": "task", "pair": "toy", "metric": "exact",
                                   "n_public": 60, "n_test": 4, "source": "files"}
    listed = admin_api.client.get("/v1/admin/tasks", headers=admin(admin_api), params={"pair": "toy"}).json()
    assert [t["id"] for t in listed["data"]][-1] == "sums" and listed["count"] == 5
    pair = admin_api.client.get("/v1/pairs/toy", headers=admin_api.auth("acme")).json()
    details = {t["id"]: t for t in pair["task_details"]}
    assert details["sums"]["gt"] is None and details["sums"]["source"] == "files"
    assert details["rotate-6"]["gt"]["id"] == "all" and len(details["rotate-6"]["gt"]["version"]) == 12
    assert add_task(admin_api).status_code == 409
    assert add_task(admin_api, "rotate-3").status_code == 409
    assert add_task(admin_api, "words", metric="rouge1").json()["metric"] == "rouge1"
    assert add_task(admin_api, "bad", metric="bleu").status_code == 400
    assert add_task(admin_api, "untested", test=None).json()["n_test"] == 0


def test_malformed_lines_are_reported_by_number_and_nothing_is_stored(admin_api: Api, toy_copy_dir: Path):
    response = add_task(admin_api, "broken", public=TEST[:-1] + '\nnot json\n{"prompt": "a"}\n')
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_data_file" and error["param"] == "public"
    assert "line 5:" in error["message"] and "line 6:" in error["message"]
    assert not (toy_copy_dir / "toy" / "tasks" / "broken").exists()
    assert list(admin_api.settings.tmp_dir.iterdir()) == []  # the uploads' temporary files are gone
    missing = admin_api.client.post("/v1/admin/tasks", headers=admin(admin_api), data={"pair": "toy", "id": "x"},
                                    files={"test": ("t.jsonl", ROWS.encode())})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "public"


def test_a_shadow_build_reuses_runs_on_disk_and_can_be_cancelled(admin_api: Api):
    body = {"pair": "toy", "task": "rotate-6", "runs": 5, "steps": 4, "keep_last": 2, "subset_size": 32,
            "chunk_size": 2}
    build = admin_api.client.post("/v1/admin/shadow-builds", headers=admin(admin_api), json=body)
    assert build.status_code == 202, build.text
    build = build.json()
    assert (build["status"], build["done"], build["total"], build["chunks"]) == ("queued", 0, 5, {"queued": 3})
    with session_scope() as session:
        chunks = session.scalars(select(ShadowChunk.indices).where(ShadowChunk.build_id == build["id"])).all()
    assert sorted(chunks) == [[0, 1], [2, 3], [4]]
    cancelled = admin_api.client.post(f"/v1/admin/shadow-builds/{build['id']}/cancel", headers=admin(admin_api))
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["chunks"] == {"cancelled": 3}
    assert admin_api.client.post(f"/v1/admin/shadow-builds/{build['id']}/cancel",
                                 headers=admin(admin_api)).status_code == 409

    from models.pairs import PairStore
    from models.recipes import provider_plan
    from models.training.shadow import run_subsets

    pair = PairStore(admin_api.settings.pairs_dir).get("toy")
    plan = provider_plan("toy", "rotate-6", 5, 3000, {k: body[k] for k in ("steps", "keep_last", "subset_size")})
    assert plan.key() == build["plan_key"]
    run_subsets(str(pair.root), plan, [0, 1, 2])  # as if an earlier build had made three runs
    again = admin_api.client.post("/v1/admin/shadow-builds", headers=admin(admin_api), json=body).json()
    assert (again["done"], again["reused"], again["chunks"]) == (3, 3, {"queued": 1})
    events = admin_api.client.get(f"/v1/admin/shadow-builds/{again['id']}/events", headers=admin(admin_api)).json()
    assert "3 already on disk" in events["data"][0]["message"]
    whole = admin_api.client.post("/v1/admin/shadow-builds", headers=admin(admin_api),
                                  json=body | {"runs": 3}).json()
    assert (whole["status"], whole["done"], whole["chunks"]) == ("succeeded", 3, {})


def test_bad_builds_and_trainings_are_refused_before_anything_is_queued(admin_api: Api):
    post = lambda path, body: admin_api.client.post(path, headers=admin(admin_api), json=body)  # noqa: E731
    assert post("/v1/admin/shadow-builds", {"pair": "toy", "task": "nope-1", "runs": 2}).status_code == 404
    assert post("/v1/admin/shadow-builds", {"pair": "nope", "task": "rotate-6", "runs": 2}).status_code == 404
    too_big = post("/v1/admin/shadow-builds", {"pair": "toy", "task": "rotate-6", "runs": 2, "subset_size": 99999})
    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "invalid_settings"
    assert post("/v1/admin/shadow-builds", {"pair": "toy", "task": "rotate-6", "runs": 0}).status_code == 422
    unknown = {"pair": "toy", "task": "rotate-6", "runs": 1, "bogus": 1}
    assert post("/v1/admin/shadow-builds", unknown).status_code == 422
    unbuilt = post("/v1/admin/gt-trainings", {"pair": "toy", "tasks": ["rotate-6"]})
    assert unbuilt.status_code == 409 and "shadow" in unbuilt.json()["error"]["message"]
    assert post("/v1/admin/gt-trainings", {"pair": "toy", "tasks": ["nope-1"]}).status_code == 404
    assert admin_api.client.get("/v1/admin/shadow-builds", headers=admin(admin_api)).json()["count"] == 0
    assert admin_api.client.get("/v1/admin/gt-trainings", headers=admin(admin_api)).json()["count"] == 0
    gts = admin_api.client.get("/v1/admin/gts/toy", headers=admin(admin_api)).json()
    assert [(g["gt_id"], g["active"]) for g in gts["data"]] == [("all", True)]
    activate = admin_api.client.post("/v1/admin/gts/toy/all/activate", headers=admin(admin_api),
                                     json={"version": "0123456789ab"})
    assert activate.status_code == 404
