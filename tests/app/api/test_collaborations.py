"""Collaborations and pooled upgrades through the API (no worker runs here: jobs stay queued).

Consent: only a checkpoint's owner contributes it, only joined members contribute or pool, and a pooled
job and its delta are readable by the collaboration's joined members and by no one else.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save
from sqlalchemy import select

from app.db.session import session_scope
from app.db.tables import Checkpoint, Collaboration, CollaborationMember, Contribution, Delta, Job, utcnow
from tests.app.api.conftest import Api
from tests.app.api.test_auth_and_errors import assert_error
from tests.app.api.test_checkpoints import adapter, upload


@pytest.fixture(scope="module")
def init(toy_pairs_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))


def org_id(api: Api, org: str) -> str:
    return api.client.get("/v1/organizations/me", headers=api.auth(org)).json()["id"]


def post(api: Api, org: str, url: str, body: dict | None = None):  # noqa: ANN201
    return api.client.post(url, headers=api.auth(org), json=body)


def get(api: Api, org: str, url: str):  # noqa: ANN201
    return api.client.get(url, headers=api.auth(org))


def checkpoint(api: Api, org: str, init: dict, seed: int) -> str:
    response = upload(api, save(adapter(init, seed)), org=org)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def open_with(api: Api, *guests: str, owner: str = "acme") -> str:
    """A toy collaboration opened by `owner` that every guest has joined."""
    created = post(api, owner, "/v1/collaborations", {"name": "shared rotations", "pair": "toy"})
    assert created.status_code == 200, created.text
    collab = created.json()["id"]
    for guest in guests:
        assert post(api, owner, f"/v1/collaborations/{collab}/invitations",
                    {"organization_id": org_id(api, guest)}).status_code == 200
        assert post(api, guest, f"/v1/collaborations/{collab}/join").status_code == 200
    return collab


def contribute(api: Api, org: str, collab: str, checkpoint_id: str):  # noqa: ANN201
    return post(api, org, f"/v1/collaborations/{collab}/contributions", {"checkpoint_id": checkpoint_id})


def pooled_upgrade(api: Api, org: str, collab: str, pair: str = "toy"):  # noqa: ANN201
    return post(api, org, "/v1/upgrades", {"pair": pair, "collaboration_id": collab})


def test_my_organization(api: Api) -> None:
    me = get(api, "acme", "/v1/organizations/me").json()
    assert me["object"] == "organization" and me["name"] == "acme" and me["id"].startswith("org_")
    assert_error(api.client.get("/v1/organizations/me"), 401, "missing_api_key")


def test_invite_join_contribute_pool(toy_api: Api, init: dict) -> None:
    created = post(toy_api, "acme", "/v1/collaborations", {"name": "shared rotations", "pair": "toy"}).json()
    collab, acme, globex = created["id"], org_id(toy_api, "acme"), org_id(toy_api, "globex")
    assert (created["owner"], created["status"], created["pair"]) == (acme, "joined", "toy")
    assert [(m["organization_name"], m["status"]) for m in created["members"]] == [("acme", "joined")]

    invited = post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": globex})
    assert [m["status"] for m in invited.json()["members"]] == ["joined", "invited"]
    seen = get(toy_api, "globex", "/v1/collaborations").json()
    assert seen["count"] == 1 and seen["data"][0]["status"] == "invited"
    joined = post(toy_api, "globex", f"/v1/collaborations/{collab}/join").json()
    assert joined["status"] == "joined" and joined["members"][1]["joined_at"] is not None
    assert post(toy_api, "globex", f"/v1/collaborations/{collab}/join").json() == joined  # joining again

    mine, theirs = checkpoint(toy_api, "acme", init, 0), checkpoint(toy_api, "globex", init, 1)
    first = contribute(toy_api, "acme", collab, mine).json()
    assert (first["organization_id"], first["checkpoint_id"]) == (acme, mine)
    assert contribute(toy_api, "globex", collab, theirs).status_code == 200
    again = contribute(toy_api, "acme", collab, checkpoint(toy_api, "acme", init, 2))
    assert "withdraw it first" in assert_error(again, 409, "conflict")["message"]
    listed = get(toy_api, "acme", f"/v1/collaborations/{collab}").json()["contributions"]
    assert [c["checkpoint_id"] for c in listed] == [mine, theirs]

    job = pooled_upgrade(toy_api, "globex", collab)
    assert job.status_code == 200, job.text
    job = job.json()
    assert job["collaboration_id"] == collab and job["checkpoint_ids"] == [mine, theirs]
    assert "pooled" in job["events"][0]["message"]
    assert get(toy_api, "acme", f"/v1/upgrades/{job['id']}").json()["id"] == job["id"]  # every member
    assert [j["id"] for j in get(toy_api, "acme", "/v1/upgrades").json()["data"]] == [job["id"]]


def test_only_the_owner_contributes_a_checkpoint(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    acme_checkpoint = checkpoint(toy_api, "acme", init, 0)
    # A joined member naming another member's checkpoint: it does not exist for them.
    refused = contribute(toy_api, "globex", collab, acme_checkpoint)
    assert assert_error(refused, 422, "reference_not_found")["param"] == "checkpoint_id"
    assert get(toy_api, "acme", f"/v1/collaborations/{collab}").json()["contributions"] == []
    # Nor can the owner of the collaboration pool a checkpoint by listing it in an upgrade of its own.
    globex_checkpoint = checkpoint(toy_api, "globex", init, 1)
    own = post(toy_api, "acme", "/v1/upgrades", {"pair": "toy", "checkpoint_ids": [acme_checkpoint,
                                                                                   globex_checkpoint]})
    assert_error(own, 404, "checkpoint_not_found")


def test_outsiders_see_nothing(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    for org in ("acme", "globex"):
        assert contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org))).status_code == 200
    outsider = checkpoint(toy_api, "initech", init, 9)
    for response in (get(toy_api, "initech", f"/v1/collaborations/{collab}"),
                     post(toy_api, "initech", f"/v1/collaborations/{collab}/join"),
                     post(toy_api, "initech", f"/v1/collaborations/{collab}/invitations",
                          {"organization_id": org_id(toy_api, "initech")}),
                     contribute(toy_api, "initech", collab, outsider),
                     get(toy_api, "initech", "/v1/collaborations/collab_nope")):
        assert_error(response, 404, "not_found")
    assert_error(pooled_upgrade(toy_api, "initech", collab), 404, "not_found")
    assert get(toy_api, "initech", "/v1/collaborations").json()["count"] == 0
    job = pooled_upgrade(toy_api, "acme", collab).json()
    assert_error(get(toy_api, "initech", f"/v1/upgrades/{job['id']}"), 404, "not_found")
    assert get(toy_api, "initech", "/v1/upgrades").json()["count"] == 0


def test_an_invited_organization_must_join_first(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    for org in ("acme", "globex"):
        contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org)))
    post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": org_id(toy_api, "initech")})
    assert get(toy_api, "initech", f"/v1/collaborations/{collab}").json()["status"] == "invited"
    refused = contribute(toy_api, "initech", collab, checkpoint(toy_api, "initech", init, 9))
    assert "join" in assert_error(refused, 403, "permission_denied")["message"]
    assert_error(pooled_upgrade(toy_api, "initech", collab), 403, "permission_denied")
    job = pooled_upgrade(toy_api, "acme", collab).json()
    assert_error(get(toy_api, "initech", f"/v1/upgrades/{job['id']}"), 404, "not_found")


def test_idempotency_key(toy_api: Api) -> None:
    body = {"name": "retry", "pair": "toy"}
    headers = toy_api.auth() | {"Idempotency-Key": "open-1"}
    first = toy_api.client.post("/v1/collaborations", headers=headers, json=body).json()
    assert toy_api.client.post("/v1/collaborations", headers=headers, json=body).json()["id"] == first["id"]
    assert get(toy_api, "acme", "/v1/collaborations").json()["count"] == 1
    assert delete(toy_api, "acme", f"/v1/collaborations/{first['id']}").status_code == 200
    gone = toy_api.client.post("/v1/collaborations", headers=headers, json=body)
    assert "deleted" in assert_error(gone, 409, "conflict")["message"]  # not the collaboration as it was


def test_who_may_invite_and_whom(toy_api: Api) -> None:
    collab = open_with(toy_api, "globex")
    initech = org_id(toy_api, "initech")
    url = f"/v1/collaborations/{collab}/invitations"
    assert_error(post(toy_api, "globex", url, {"organization_id": initech}), 403, "permission_denied")
    assert_error(post(toy_api, "acme", url, {"organization_id": "org_nope"}), 422, "reference_not_found")
    assert_error(post(toy_api, "acme", url, {"organization_id": org_id(toy_api, "globex")}), 409, "conflict")
    assert_error(post(toy_api, "acme", url, {}), 422, "invalid_request")
    assert_error(post(toy_api, "acme", "/v1/collaborations", {"name": "x", "pair": "nope"}), 404, "pair_not_found")
    assert_error(post(toy_api, "acme", "/v1/collaborations", {"name": "", "pair": "toy"}), 422, "invalid_request")


def test_a_pooled_upgrade_needs_two_organizations_of_its_pair(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    contribute(toy_api, "acme", collab, checkpoint(toy_api, "acme", init, 0))
    assert "at least 2" in assert_error(pooled_upgrade(toy_api, "acme", collab), 409, "conflict")["message"]
    acme = org_id(toy_api, "acme")
    with session_scope() as s:  # a checkpoint of another pair (only the toy pair is built here)
        s.add(Checkpoint(id="ckpt_smol", org_id=acme, pair="smol", sha256="0" * 64, bytes=1, filename="a",
                         adapter_config=None, created_at=utcnow()))
    assert_error(contribute(toy_api, "acme", collab, "ckpt_smol"), 409, "conflict")
    both = {"pair": "toy", "checkpoint_ids": ["ckpt_smol"], "collaboration_id": collab}
    assert_error(post(toy_api, "acme", "/v1/upgrades", both), 422, "invalid_request")
    with session_scope() as s:
        s.get(Collaboration, collab).pair = "smol"
    error = assert_error(pooled_upgrade(toy_api, "acme", collab), 400, "invalid_request")
    assert error["param"] == "pair"


def test_withdrawing_a_contribution(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    mine = checkpoint(toy_api, "acme", init, 0)
    contribution = contribute(toy_api, "acme", collab, mine).json()["id"]
    contribute(toy_api, "globex", collab, checkpoint(toy_api, "globex", init, 1))
    url = f"/v1/collaborations/{collab}/contributions/{contribution}"
    assert_error(toy_api.client.delete(url, headers=toy_api.auth("globex")), 403, "permission_denied")
    job = pooled_upgrade(toy_api, "acme", collab).json()
    assert_error(toy_api.client.delete(url, headers=toy_api.auth()), 409, "conflict")  # a queued job reads it
    assert_error(toy_api.client.delete(f"/v1/checkpoints/{mine}", headers=toy_api.auth()), 409, "conflict")
    # Any member may cancel the pooled upgrade; then the contribution can go.
    assert post(toy_api, "globex", f"/v1/upgrades/{job['id']}/cancel").json()["status"] == "cancelled"
    assert toy_api.client.delete(url, headers=toy_api.auth()).json() == {
        "id": contribution, "object": "contribution", "deleted": True}
    # Deleting a contributed checkpoint withdraws it too.
    again = contribute(toy_api, "acme", collab, mine).json()
    assert again["checkpoint_id"] == mine
    assert toy_api.client.delete(f"/v1/checkpoints/{mine}", headers=toy_api.auth()).status_code == 200
    assert len(get(toy_api, "acme", f"/v1/collaborations/{collab}").json()["contributions"]) == 1


def test_a_pooled_delta_is_for_members_only(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": org_id(toy_api, "hooli")})
    for org in ("acme", "globex"):
        contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org)))
    job = pooled_upgrade(toy_api, "globex", collab).json()
    delta_id = _store_delta(job["id"])
    for member in ("acme", "globex"):
        got = get(toy_api, member, f"/v1/deltas/{delta_id}").json()
        assert got["collaboration_id"] == collab and got["upgrade_id"] == job["id"]
        assert get(toy_api, member, "/v1/deltas").json()["count"] == 1
        assert get(toy_api, member, f"/v1/deltas/{delta_id}/files/adapter_config.json").content == b"{}"
        assert delta_id in [m["id"] for m in get(toy_api, member, "/v1/models").json()["data"]]
        assert get(toy_api, member, f"/v1/models/{delta_id}").json()["owned_by"] == org_id(toy_api, "globex")
    for outsider in ("initech", "hooli"):  # hooli is invited, not joined
        assert_error(get(toy_api, outsider, f"/v1/deltas/{delta_id}"), 404, "not_found")
        assert_error(get(toy_api, outsider, f"/v1/deltas/{delta_id}/archive"), 404, "not_found")
        assert get(toy_api, outsider, "/v1/deltas").json()["count"] == 0
        assert delta_id not in [m["id"] for m in get(toy_api, outsider, "/v1/models").json()["data"]]
        assert_error(get(toy_api, outsider, f"/v1/models/{delta_id}"), 404, "not_found")


FILES = ("adapter_config.json", "adapter_model.safetensors", "update.safetensors")


def _store_delta(job_id: str) -> str:
    """The delta a worker would store for the job (its files stand in: only access is tested here)."""
    from app.config import get_settings
    from app.storage import BlobStore

    settings = get_settings()
    path = settings.tmp_dir / "adapter_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}")
    sha, size = BlobStore(settings.blobs_dir, settings.tmp_dir).put_file(path)
    with session_scope() as s:
        job = s.get(Job, job_id)
        job.status = "succeeded"
        delta = Delta(org_id=job.org_id, job_id=job.id, collaboration_id=job.collaboration_id, pair=job.pair,
                      task=None, gt_id=job.gt_id, gt_version="gt-1", sources=job.inputs,
                      files={name: {"sha256": sha, "bytes": size} for name in FILES}, verification={},
                      created_at=utcnow())
        s.add(delta)
        s.flush()
        return delta.id


def delete(api: Api, org: str, url: str):  # noqa: ANN201
    return api.client.delete(url, headers=api.auth(org))


def test_leaving_and_removing_members_takes_their_contribution_and_access(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex", "initech")
    post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": org_id(toy_api, "hooli")})
    for org in ("acme", "globex", "initech"):
        contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org)))
    members = f"/v1/collaborations/{collab}/members"
    globex, initech, hooli = (org_id(toy_api, o) for o in ("globex", "initech", "hooli"))
    assert_error(delete(toy_api, "globex", f"{members}/{initech}"), 403, "permission_denied")  # not the opener
    assert_error(delete(toy_api, "acme", f"{members}/{org_id(toy_api, 'acme')}"), 409, "conflict")
    assert_error(delete(toy_api, "acme", f"{members}/org_nope"), 404, "not_found")
    job = pooled_upgrade(toy_api, "acme", collab).json()
    assert_error(delete(toy_api, "globex", f"{members}/{globex}"), 409, "conflict")  # a queued upgrade reads it
    post(toy_api, "acme", f"/v1/upgrades/{job['id']}/cancel")
    assert delete(toy_api, "globex", f"{members}/{globex}").json() == {
        "id": globex, "object": "collaboration.member", "deleted": True}
    assert delete(toy_api, "hooli", f"{members}/{hooli}").status_code == 200  # declining an invitation
    assert delete(toy_api, "acme", f"{members}/{initech}").status_code == 200  # removed by the opener
    for gone in ("globex", "hooli", "initech"):
        assert_error(get(toy_api, gone, f"/v1/collaborations/{collab}"), 404, "not_found")
        assert_error(get(toy_api, gone, f"/v1/upgrades/{job['id']}"), 404, "not_found")
    left = get(toy_api, "acme", f"/v1/collaborations/{collab}").json()
    assert [m["organization_id"] for m in left["members"]] == [org_id(toy_api, "acme")]
    assert [c["organization_id"] for c in left["contributions"]] == [org_id(toy_api, "acme")]


def test_only_the_opener_deletes_a_collaboration_and_not_while_members_rely_on_it(toy_api: Api,
                                                                                  init: dict) -> None:
    collab = open_with(toy_api, "globex")
    for org in ("acme", "globex"):
        contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org)))
    url = f"/v1/collaborations/{collab}"
    assert_error(delete(toy_api, "globex", url), 403, "permission_denied")
    job = pooled_upgrade(toy_api, "acme", collab).json()
    assert "1 upgrade(s) in flight" in assert_error(delete(toy_api, "acme", url), 409, "conflict")["message"]
    _store_delta(job["id"])
    assert "1 pooled delta(s)" in assert_error(delete(toy_api, "acme", url), 409, "conflict")["message"]
    other = open_with(toy_api, "globex")
    contribute(toy_api, "globex", other, checkpoint(toy_api, "globex", init, 7))
    assert delete(toy_api, "acme", f"/v1/collaborations/{other}").json() == {
        "id": other, "object": "collaboration", "deleted": True}
    assert_error(get(toy_api, "globex", f"/v1/collaborations/{other}"), 404, "not_found")
    assert get(toy_api, "globex", "/v1/checkpoints").json()["count"] == 2  # the checkpoints stay their owners'
    with session_scope() as s:  # its invitations and contributions went with it
        for table in (CollaborationMember, Contribution):
            assert not s.scalars(select(table).where(table.collaboration_id == other)).all()


def test_a_pooled_delta_belongs_to_the_members_who_took_part(toy_api: Api, init: dict) -> None:
    """Joined later, joined without contributing, only invited, or gone: none of them reads it. Before,
    every joined member read every pooled delta of the collaboration, whenever it joined."""
    collab = open_with(toy_api, "globex", "initech")
    for org in ("acme", "globex"):
        contribute(toy_api, org, collab, checkpoint(toy_api, org, init, len(org)))
    refused = pooled_upgrade(toy_api, "initech", collab)  # a member that gave nothing cannot start one
    assert "contribute" in assert_error(refused, 409, "conflict")["message"]
    job = pooled_upgrade(toy_api, "acme", collab).json()
    delta_id = _store_delta(job["id"])
    post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": org_id(toy_api, "hooli")})
    assert post(toy_api, "hooli", f"/v1/collaborations/{collab}/join").status_code == 200
    contribute(toy_api, "hooli", collab, checkpoint(toy_api, "hooli", init, 9))  # joined and gave, afterwards
    for member in ("acme", "globex"):
        assert get(toy_api, member, f"/v1/deltas/{delta_id}").status_code == 200
        assert get(toy_api, member, f"/v1/upgrades/{job['id']}").status_code == 200
    for late in ("initech", "hooli"):
        assert_error(get(toy_api, late, f"/v1/deltas/{delta_id}"), 404, "not_found")
        assert_error(get(toy_api, late, f"/v1/upgrades/{job['id']}"), 404, "not_found")
        assert get(toy_api, late, "/v1/deltas").json()["count"] == 0
        assert delta_id not in [m["id"] for m in get(toy_api, late, "/v1/models").json()["data"]]
    members = f"/v1/collaborations/{collab}/members"
    assert delete(toy_api, "acme", f"{members}/{org_id(toy_api, 'globex')}").status_code == 200
    assert_error(get(toy_api, "globex", f"/v1/deltas/{delta_id}"), 404, "not_found")  # took part, then left
    assert get(toy_api, "acme", f"/v1/deltas/{delta_id}").status_code == 200


def test_an_invited_organization_does_not_see_the_members_checkpoints(toy_api: Api, init: dict) -> None:
    collab = open_with(toy_api, "globex")
    mine = checkpoint(toy_api, "acme", init, 1)
    contribute(toy_api, "acme", collab, mine)
    post(toy_api, "acme", f"/v1/collaborations/{collab}/invitations", {"organization_id": org_id(toy_api, "hooli")})
    for caller in ("hooli", "globex"):
        for body in (get(toy_api, caller, f"/v1/collaborations/{collab}").json(),
                     get(toy_api, caller, "/v1/collaborations").json()["data"][0]):
            seen = [c["checkpoint_id"] for c in body["contributions"]]
            assert seen == ([None] if caller == "hooli" else [mine]), caller
