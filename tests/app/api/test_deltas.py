"""Delta downloads: ETag = sha256, conditional requests, Range (206), the zip archive."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

from sqlalchemy import select

from app.db.session import session_scope
from app.db.tables import Delta, Job, Organization, utcnow
from app.storage import BlobStore
from tests.app.api.conftest import Api

FILES = {"adapter_config.json": b'{"r": 2}', "adapter_model.safetensors": bytes(range(256)) * 40,
         "update.safetensors": b"u" * 1000}


def make_delta(api: Api) -> str:
    """A stored delta (rows and blobs) as a worker leaves it."""
    api.auth("acme")
    store = BlobStore(api.settings.blobs_dir, api.settings.tmp_dir)
    files = {}
    for name, data in FILES.items():
        path = api.settings.tmp_dir / name
        path.write_bytes(data)
        sha, size = store.put_file(path)
        path.unlink()
        files[name] = {"sha256": sha, "bytes": size}
    with session_scope() as s:
        org_id = s.scalar(select(Organization.id).where(Organization.name == "acme"))
        s.add(Job(id="upg_d", org_id=org_id, pair="toy", task=None, gt_id="all", inputs=[],
                  status="succeeded", progress=1.0, stage="succeeded", cancel_requested=False, attempts=1,
                  created_at=utcnow()))
        s.flush()
        s.add(Delta(id="dlt_d", org_id=org_id, job_id="upg_d", pair="toy", task=None, gt_id="all",
                    gt_version="gt-1", sources=[{"id": "ckpt_x", "sha256": "0" * 64}], files=files,
                    verification={"ok": True}, created_at=utcnow()))
    return "dlt_d"


def test_metadata_files_etag_range_archive(api: Api) -> None:
    delta_id = make_delta(api)
    meta = api.client.get(f"/v1/deltas/{delta_id}", headers=api.auth()).json()
    assert meta["upgrade_id"] == "upg_d" and meta["bytes"] == sum(len(d) for d in FILES.values())
    assert {f["name"]: f["sha256"] for f in meta["files"]} == {
        n: hashlib.sha256(d).hexdigest() for n, d in FILES.items()}
    assert api.client.get("/v1/deltas", headers=api.auth()).json()["count"] == 1
    url = f"/v1/deltas/{delta_id}/files/adapter_model.safetensors"
    full = api.client.get(url, headers=api.auth())
    data = FILES["adapter_model.safetensors"]
    assert full.content == data and full.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert full.headers["accept-ranges"] == "bytes"
    part = api.client.get(url, headers=api.auth() | {"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    cached = api.client.get(url, headers=api.auth() | {"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304
    assert api.client.get(f"/v1/deltas/{delta_id}/files/other.bin", headers=api.auth()).status_code == 422
    archive = api.client.get(f"/v1/deltas/{delta_id}/archive", headers=api.auth())
    assert archive.status_code == 200 and archive.headers["etag"]
    assert archive.headers["content-type"] == "application/zip"  # as the OpenAPI document says
    with zipfile.ZipFile(io.BytesIO(archive.content)) as z:
        assert sorted(z.namelist()) == sorted([*FILES, "gradlift.json"])
        assert z.read("adapter_model.safetensors") == data
        assert json.loads(z.read("gradlift.json"))["id"] == delta_id
    again = api.client.get(f"/v1/deltas/{delta_id}/archive", headers=api.auth())
    assert again.content == archive.content and again.headers["etag"] == archive.headers["etag"]
