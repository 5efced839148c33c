"""Blobs are shared by content across organizations: no blob may vanish while a row refers to it, however
a delete interleaves with an upload of the same bytes or an upgrade that reads them. On SQLite and on
PostgreSQL; each step that could interleave is held open by pausing the real code at that point."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from app.db import jobs
from app.storage import BlobStore, BlobWriter
from tests.app.api.conftest import Api, _api
from tests.app.api.test_checkpoints import adapter, upload
from tests.conftest import use_settings

PAUSE_S = 2.0  # how long the paused step waits for the other request (which, locked out, cannot finish)


@pytest.fixture(params=["sqlite", "postgresql"])
def race_api(request: pytest.FixtureRequest, service_env: object, toy_pairs_dir: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    values = {"pairs_dir": str(toy_pairs_dir), "max_upload_bytes": str(64 * 1024)}
    if request.param == "postgresql":
        values["database_url"] = request.getfixturevalue("postgres_url")
    yield from _api(use_settings(monkeypatch, **values))


@pytest.fixture(scope="module")
def content(toy_pairs_dir: Path) -> bytes:
    init: dict[str, torch.Tensor] = load_file(str(toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"))
    return save(adapter(init, seed=7))


def paused_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> tuple[threading.Event,
                                                                                       threading.Event]:
    """Make `owner.name` stop after it ran, until `resume` is set (or PAUSE_S passed); `reached` is set
    when it gets there."""
    reached, resume = threading.Event(), threading.Event()
    real: Callable = getattr(owner, name)

    def pausing(*args: object, **kwargs: object) -> object:
        result = real(*args, **kwargs)
        reached.set()
        resume.wait(PAUSE_S)
        return result

    monkeypatch.setattr(owner, name, pausing)
    return reached, resume


def in_thread(results: dict, name: str, call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.update({name: call()}))
    thread.start()
    return thread


def blob_of(api: Api, org: str, checkpoint_id: str) -> bool:
    checkpoint = api.client.get(f"/v1/checkpoints/{checkpoint_id}", headers=api.auth(org)).json()
    return BlobStore(api.settings.blobs_dir, api.settings.tmp_dir).exists(checkpoint["sha256"])


def test_a_delete_while_another_organization_uploads_the_same_bytes(race_api: Api, content: bytes,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload found the blob already there and moved on to insert its row; meanwhile the delete of
    the other checkpoint saw no other reference and removed the blob (15 of 60 races in the probe)."""
    api, results = race_api, {}
    mine = upload(api, content, org="acme").json()["id"]
    api.auth("globex")
    placed, resume = paused_after(monkeypatch, BlobWriter, "commit")
    uploading = in_thread(results, "upload", lambda: upload(api, content, org="globex"))
    assert placed.wait(30)
    deleting = in_thread(results, "delete", lambda: api.client.delete(f"/v1/checkpoints/{mine}",
                                                                      headers=api.auth("acme")))
    deleting.join(PAUSE_S / 2)  # the delete finishes now only if nothing holds it off
    resume.set()
    uploading.join(30)
    deleting.join(30)
    assert results["upload"].status_code == 200 and results["delete"].status_code == 200
    theirs = results["upload"].json()["id"]
    assert blob_of(api, "globex", theirs), "a checkpoint answers 200 but its blob is gone"


def test_a_delete_while_an_upgrade_reads_the_checkpoint(race_api: Api, content: bytes,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The upgrade read the checkpoint and was about to commit its job; the delete saw no job using it."""
    api, results = race_api, {}
    checkpoint_id = upload(api, content, org="acme").json()["id"]
    made, resume = paused_after(monkeypatch, jobs, "create_job")
    body = {"pair": "toy", "checkpoint_ids": [checkpoint_id]}
    upgrading = in_thread(results, "upgrade", lambda: api.client.post("/v1/upgrades", headers=api.auth("acme"),
                                                                      json=body))
    assert made.wait(30)
    deleting = in_thread(results, "delete", lambda: api.client.delete(f"/v1/checkpoints/{checkpoint_id}",
                                                                      headers=api.auth("acme")))
    deleting.join(PAUSE_S / 2)
    resume.set()
    upgrading.join(30)
    deleting.join(30)
    upgrade, delete = results["upgrade"], results["delete"]
    if upgrade.status_code == 200:  # the job won: the checkpoint it reads stays, with its blob
        assert delete.status_code == 409 and blob_of(api, "acme", checkpoint_id), delete.text
    else:  # the delete won: the upgrade found no checkpoint
        assert upgrade.status_code == 404 and delete.status_code == 200, upgrade.text


def test_many_rounds_of_delete_and_upload(race_api: Api, content: bytes) -> None:
    """No pauses: two organizations upload and delete the same bytes at once, round after round."""
    api = race_api
    for org in ("acme", "globex"):
        api.auth(org)
    for _ in range(15):
        results: dict = {}
        ids = {org: upload(api, content, org=org).json()["id"] for org in ("acme", "globex")}
        path = f"/v1/checkpoints/{ids['acme']}"
        threads = [in_thread(results, "delete", lambda p=path: api.client.delete(p, headers=api.auth("acme"))),
                   in_thread(results, "upload", lambda: upload(api, content, org="acme"))]
        for thread in threads:
            thread.join(30)
        assert blob_of(api, "globex", ids["globex"]) and blob_of(api, "acme", results["upload"].json()["id"])
        for org in ("acme", "globex"):
            for row in api.client.get("/v1/checkpoints", headers=api.auth(org)).json()["data"]:
                api.client.delete(f"/v1/checkpoints/{row['id']}", headers=api.auth(org))
        assert api.stored_files() == []
