"""Generated LLM adapters: metadata, files (ETag = sha256, Range requests) and a zip of the PEFT folder."""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from app.api.deps import CurrentOrg, DeltaDep, SessionDep, SettingsDep, StoreDep
from app.db import queries
from app.db.tables import Delta
from app.errors import ApiError, Code
from app.schemas.common import ERROR_RESPONSES
from app.schemas.deltas import DeltaFile, DeltaFileName, DeltaPublic, DeltaSource, DeltasPublic
from app.storage import CHUNK, BlobStore, sha256_file

router = APIRouter(prefix="/v1/deltas", tags=["deltas"], responses=ERROR_RESPONSES)

METADATA_FILE = "gradlift.json"  # beside the PEFT files in the archive: where the adapter came from
_MEDIA = {".json": "application/json", ".safetensors": "application/octet-stream", ".zip": "application/zip"}
_FILE_RESPONSE = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "The file, or the requested byte range (206)."}


def to_public(delta: Delta) -> DeltaPublic:
    files = [DeltaFile(name=name, bytes=info["bytes"], sha256=info["sha256"])
             for name, info in sorted(delta.files.items())]
    return DeltaPublic(id=delta.id, pair=delta.pair, task=delta.task, gt_id=delta.gt_id,
                       gt_version=delta.gt_version, mode=delta.mode, quality=delta.quality,
                       upgrade_id=delta.job_id,
                       collaboration_id=delta.collaboration_id,
                       sources=[DeltaSource(**s) for s in delta.sources], files=files,
                       bytes=sum(f.bytes for f in files), verification=delta.verification,
                       created_at=delta.created_at)


def _file_response(request: Request, path: Path, sha256: str, filename: str) -> Response:
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "private, immutable"}
    return FileResponse(path, filename=filename, headers=headers,
                        media_type=_MEDIA.get(Path(filename).suffix, "application/octet-stream"))


@router.get("")
def list_deltas(session: SessionDep, org: CurrentOrg,
                limit: int = Query(default=100, ge=1, le=1000)) -> DeltasPublic:
    """List the organization's deltas and its collaborations' pooled deltas, newest first."""
    rows = queries.list_deltas(session, org.id, limit)
    return DeltasPublic(data=[to_public(r) for r in rows], count=len(rows))


@router.get("/{delta_id}")
def get_delta(delta: DeltaDep) -> DeltaPublic:
    """A delta's metadata: pair, task, sources, GT version, files with sizes and sha256."""
    return to_public(delta)


@router.get("/{delta_id}/files/{name}", response_class=FileResponse, responses={200: _FILE_RESPONSE})
def get_delta_file(delta: DeltaDep, name: DeltaFileName, request: Request, store: StoreDep) -> Response:
    """One file of the delta's PEFT folder; `ETag` is its sha256; `Range` gives 206 partial content."""
    info = delta.files.get(name.value)
    if info is None:
        raise ApiError(Code.not_found, f"Delta {delta.id!r} has no file {name.value!r}.", param="name")
    return _file_response(request, store.path(info["sha256"]), info["sha256"], name.value)


_ZIP_RESPONSE = {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                 "description": "A zip of the PEFT folder and its metadata."}


@router.get("/{delta_id}/archive", response_class=FileResponse, responses={200: _ZIP_RESPONSE})
def get_delta_archive(delta: DeltaDep, request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    """The delta as one zip: the three PEFT folder files and gradlift.json."""
    path, sha256 = _archive(delta, store, settings.archives_dir)
    return _file_response(request, path, sha256, f"{delta.id}.zip")


def _archive(delta: Delta, store: BlobStore, folder: Path) -> tuple[Path, str]:
    """Build the zip once, with the same bytes every time (fixed times, sorted names); (path, sha256)."""
    path, digest = folder / f"{delta.id}.zip", folder / f"{delta.id}.zip.sha256"
    if path.is_file() and digest.is_file():
        return path, digest.read_text()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{delta.id}.{uuid.uuid4().hex}.part"
    stamp = delta.created_at.timetuple()[:6]
    metadata = json.dumps(to_public(delta).model_dump(mode="json"), indent=2, sort_keys=True)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, info in sorted(delta.files.items()):
                with open(store.path(info["sha256"]), "rb") as src, \
                        archive.open(zipfile.ZipInfo(name, date_time=stamp), "w", force_zip64=True) as out:
                    shutil.copyfileobj(src, out, CHUNK)
            archive.writestr(zipfile.ZipInfo(METADATA_FILE, date_time=stamp), metadata)
        sha256 = sha256_file(tmp)
        os.replace(tmp, path)
        digest.write_text(sha256)
    finally:
        tmp.unlink(missing_ok=True)
    return path, sha256
