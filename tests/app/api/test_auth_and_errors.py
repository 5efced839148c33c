"""Keys, organizations, the error body, health and the OpenAPI document (no model pair needed)."""

from __future__ import annotations

import pytest

from app.db.session import session_scope
from app.db.tables import Checkpoint, Delta, Job, utcnow
from tests.app.api.conftest import Api
from tests.conftest import use_settings

PROTECTED = ["/v1/checkpoints", "/v1/upgrades", "/v1/deltas", "/v1/pairs"]


def assert_error(response, status: int, code: str) -> dict:  # noqa: ANN001 - an httpx Response
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return error


def test_health_needs_no_key(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_metrics_are_off_unless_turned_on(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """They count every organization's jobs for anyone who asks: only the operators turn them on."""
    assert "GRADLIFT_METRICS" in assert_error(api.client.get("/metrics"), 404, "not_found")["message"]
    use_settings(monkeypatch, metrics="true")
    assert "gradlift_upgrades" in api.client.get("/metrics").text


def test_no_key_and_wrong_key(api: Api) -> None:
    for path in PROTECTED:
        error = assert_error(api.client.get(path), 401, "missing_api_key")
        assert "Authorization: Bearer" in error["message"] and error["type"] == "authentication_error"
        wrong = api.client.get(path, headers={"Authorization": "Bearer glk_wrong"})
        assert_error(wrong, 401, "invalid_api_key")
    assert api.client.get("/v1/checkpoints").headers["www-authenticate"] == "Bearer"


def test_another_organizations_ids_answer_404(api: Api) -> None:
    api.auth("acme")
    with session_scope() as s:
        org_id = _org_id(api, "acme")
        s.add(Checkpoint(id="ckpt_a", org_id=org_id, pair="toy", sha256="0" * 64, bytes=1, filename="a",
                         adapter_config=None, created_at=utcnow()))
        s.add(Job(id="upg_a", org_id=org_id, pair="toy", task=None, gt_id="all", inputs=[], status="queued",
                  progress=0.0, stage="queued", cancel_requested=False, attempts=0, created_at=utcnow()))
        s.flush()
        s.add(Delta(id="dlt_a", org_id=org_id, job_id="upg_a", pair="toy", task=None, gt_id="all",
                    gt_version="v", sources=[], files={}, verification={}, created_at=utcnow()))
    assert api.client.get("/v1/checkpoints/ckpt_a", headers=api.auth("acme")).status_code == 200
    for path in ["/v1/checkpoints/ckpt_a", "/v1/upgrades/upg_a", "/v1/upgrades/upg_a/events",
                 "/v1/deltas/dlt_a", "/v1/deltas/dlt_a/files/adapter_model.safetensors",
                 "/v1/deltas/dlt_a/archive"]:
        error = assert_error(api.client.get(path, headers=api.auth("globex")), 404, "not_found")
        assert "No " in error["message"]
    assert_error(api.client.post("/v1/upgrades/upg_a/cancel", headers=api.auth("globex")), 404, "not_found")
    assert_error(api.client.delete("/v1/checkpoints/ckpt_a", headers=api.auth("globex")), 404, "not_found")
    assert api.client.get("/v1/checkpoints", headers=api.auth("globex")).json() == {"data": [], "count": 0}


def _org_id(api: Api, name: str) -> str:
    from sqlalchemy import select

    from app.db.tables import Organization

    with session_scope() as s:
        return s.scalar(select(Organization.id).where(Organization.name == name))


def test_framework_errors_use_the_same_body(api: Api) -> None:
    assert_error(api.client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(api.client.put("/healthz"), 405, "method_not_allowed")
    error = assert_error(api.client.post("/v1/upgrades", headers=api.auth(), json={"pair": 7}), 422,
                         "invalid_request")
    assert error["param"] == "pair"
    error = assert_error(api.client.post("/v1/upgrades", headers=api.auth(), json={"pair": "toy"}), 422,
                         "invalid_request")
    assert "either checkpoint_ids or collaboration_id" in error["message"]
    response = api.client.get("/v1/checkpoints?limit=0", headers=api.auth())
    error = assert_error(response, 422, "invalid_request")
    assert error["param"] == "limit"


def test_unknown_pair(api: Api) -> None:
    error = assert_error(api.client.get("/v1/pairs/nope", headers=api.auth()), 404, "pair_not_found")
    assert "nope" in error["message"]
    assert api.client.get("/v1/pairs", headers=api.auth()).json() == {"data": [], "count": 0}


def test_openapi_describes_every_route(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ["/v1/checkpoints", "/v1/checkpoints/{checkpoint_id}", "/v1/upgrades",
                 "/v1/upgrades/{upgrade_id}", "/v1/upgrades/{upgrade_id}/events",
                 "/v1/upgrades/{upgrade_id}/cancel", "/v1/deltas", "/v1/deltas/{delta_id}",
                 "/v1/deltas/{delta_id}/files/{name}", "/v1/deltas/{delta_id}/archive", "/v1/pairs",
                 "/v1/pairs/{pair_id}", "/v1/pairs/{pair_id}/tiny-lora-init", "/healthz", "/readyz",
                 "/v1/organizations/me", "/v1/collaborations", "/v1/collaborations/{collaboration_id}",
                 "/v1/collaborations/{collaboration_id}/invitations", "/v1/collaborations/{collaboration_id}/join",
                 "/v1/collaborations/{collaboration_id}/contributions",
                 "/v1/collaborations/{collaboration_id}/contributions/{contribution_id}"]:
        assert path in paths, path
    upload = paths["/v1/checkpoints"]["post"]
    schema = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["required"]) == {"file", "pair"}
    assert {"401", "413", "415", "422"} <= set(upload["responses"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert doc["components"]["schemas"]["ErrorResponse"]


def test_readyz_names_what_is_down(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, broker_url="redis://127.0.0.1:1/0")
    ready = api.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"].startswith("error") and ready.json()["checks"]["database"] == "ok"


def test_openapi_lists_422_only_where_validation_can_fail(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path, method in [("/v1/models/{model_id}", "get"), ("/v1/deltas/{delta_id}", "get"),
                         ("/v1/upgrades/{upgrade_id}/cancel", "post"), ("/v1/chat/completions", "post")]:
        assert "422" not in paths[path][method]["responses"], path
    for path, method in [("/v1/upgrades", "post"), ("/v1/checkpoints", "get"), ("/v1/collaborations", "post")]:
        assert "422" in paths[path][method]["responses"], path
    # What the document leaves out is really not answered: an odd id is a 404, not a 422.
    assert api.client.get("/v1/models/%20odd%3Fid", headers=api.auth()).status_code == 404
    assert api.client.get("/v1/checkpoints?limit=nope", headers=api.auth()).status_code == 422
