"""Uploaded TinyLM adapters: streamed in, checked from the header before any tensor is read."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import prompts
from app.api import idempotency
from app.api.deps import (
    CheckpointDep,
    CurrentOrg,
    IdempotencyKey,
    PairsDep,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from app.db import queries
from app.db.tables import Checkpoint, Organization
from app.errors import ApiError, Code
from app.pairs import PairCatalog
from app.schemas.checkpoints import CheckpointDeleted, CheckpointPublic, CheckpointsPublic
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.storage import BlobStore
from app.uploads import StreamedForm, read_form

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=ERROR_RESPONSES)

SCOPE = "POST /v1/checkpoints"
MAX_CONFIG_BYTES = 64 * 1024
CONFIG_DEPTH = 8  # PEFT's adapter_config.json nests three levels at most
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_SEND_SAFETENSORS = "Send the adapter as safetensors (adapter_model.safetensors); pickles are never loaded."

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "pair"], "additionalProperties": False, "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "The TinyLM LoRA adapter, adapter_model.safetensors (PEFT tensor names)."},
        "config": {"type": "string", "format": "binary", "description": "Optional adapter_config.json."},
        "pair": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S",
                 "description": "The model pair the adapter was trained for, e.g. `toy`."},
        "prompts": {"type": "string", "format": "binary",
                    "description": "Optional JSONL of unlabelled prompts in the organization's own format "
                                   "(`{\"prompt\": ...}` or `{\"messages\": [...]}` ending on a user turn): "
                                   "upgrades probe and distill with them. The provider sees them."},
    }}}}}}


@router.post("", openapi_extra=_UPLOAD_BODY, responses={
    409: {"model": ErrorResponse, "description": "An Idempotency-Key reused for another request, or for a "
                                                 "checkpoint deleted since"},
    413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}})
async def create_checkpoint(request: Request, session: SessionDep, org: CurrentOrg, settings: SettingsDep,
                            store: StoreDep, pairs: PairsDep, key: IdempotencyKey = None) -> CheckpointPublic:
    """Upload a TinyLM LoRA adapter (multipart, streamed, size-limited, validated)."""
    form = await read_form(request, store, file_limits={"file": settings.max_upload_bytes,
                                                        "config": MAX_CONFIG_BYTES,
                                                        "prompts": prompts.MAX_PROMPTS_BYTES}, field_names={"pair"})
    try:
        return await run_in_threadpool(_store_checkpoint, session, org, form, pairs, store, key)
    finally:
        form.abort()


def _store_checkpoint(session: Session, org: Organization, form: StreamedForm, pairs: PairCatalog,
                      store: BlobStore, key: str | None) -> CheckpointPublic:
    from models.errors import AdapterError, ConfigError
    from models.lora.header import read_metadata
    from models.lora.privacy import adapter_privacy
    from models.lora.update import validate_adapter_file

    upload = form.files.get("file")
    if upload is None:
        raise ApiError(Code.invalid_request, "Missing the form field `file` (adapter_model.safetensors).",
                       param="file")
    if "pair" not in form.fields or not form.fields["pair"]:
        raise ApiError(Code.invalid_request, "Missing the form field `pair`.", param="pair")
    attached = form.files.get("prompts")
    print_ = idempotency.fingerprint(form.fields["pair"], upload.blob.sha256,
                                     *([attached.blob.sha256] if attached else []))
    if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is not None:
        return _as_now(session, org, made)
    pair = pairs.get(form.fields["pair"])
    _check_format(upload.filename, upload.blob.head, upload.blob.size)
    config = _read_config(form, pair.spec.lora.r)
    try:
        validate_adapter_file(upload.blob.path, pairs.tiny_adapter_shapes(pair))
        privacy = adapter_privacy(read_metadata(upload.blob.path))
    except (AdapterError, ConfigError) as exc:
        raise _invalid(f"Invalid adapter for pair {pair.id!r}: {exc}.", "file") from None
    body, prompts_sha256, prompts_count = b"", None, None
    if attached is not None:
        attached.blob.close()
        parsed = prompts.parse_upload(attached.blob.path, "prompts")
        body, prompts_count = prompts.encode(parsed), len(parsed)
        prompts_sha256 = hashlib.sha256(body).hexdigest()
    sha256, size = upload.blob.sha256, upload.blob.size
    for blob in sorted({sha256, prompts_sha256} - {None}):  # one order: never two holders waiting on each other
        queries.lock_blob(session, blob)  # until the commit: a delete of the same bytes waits, or went first
    if body:
        store.put_bytes(body)
    upload.blob.commit()  # the blobs exist before any row points at them
    row = Checkpoint(org_id=org.id, pair=pair.id, sha256=sha256, bytes=size, adapter_config=config,
                     privacy=privacy, filename=_filename(upload.filename),
                     prompts_sha256=prompts_sha256, prompts_count=prompts_count)
    session.add(row)
    session.flush()
    public = CheckpointPublic.model_validate(row)
    idempotency.remember(session, org.id, SCOPE, key, print_, public)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key won
        session.rollback()
        if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is None:
            raise
        return _as_now(session, org, made)
    return public


def _as_now(session: Session, org: Organization, checkpoint_id: str) -> CheckpointPublic:
    row = queries.get_checkpoint(session, org.id, checkpoint_id)
    if row is None:
        raise idempotency.gone("checkpoint", checkpoint_id)
    return CheckpointPublic.model_validate(row)


def _filename(sent: str) -> str:
    """The name the client gave the file, as a column holds it: no control characters, at most 255."""
    name = "".join(c for c in sent if c.isprintable())[:255]
    return name or "adapter_model.safetensors"


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(Code.invalid_adapter, message, param=param)


def _check_format(filename: str, head: bytes, size: int) -> None:
    """Refuse empty files and pickles before the safetensors checks, with a message that says what to send."""
    if size == 0:
        raise _invalid("The uploaded file is empty.", "file")
    looks_safetensors = len(head) >= 9 and head[8:9] == b"{"
    if filename.lower().endswith(_PICKLE_SUFFIXES) or (
            not looks_safetensors and (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80")):
        raise ApiError(Code.unsupported_file_type, f"{filename or 'The file'} looks like a PyTorch pickle. "
                       + _SEND_SAFETENSORS, param="file")


def _read_config(form: StreamedForm, rank: int) -> dict[str, Any] | None:
    from models.lora.header import strict_json

    upload = form.files.get("config")
    if upload is None:
        return None
    try:
        config = strict_json(upload.blob.path.read_bytes(), max_depth=CONFIG_DEPTH)
    except ValueError as exc:
        raise _invalid(f"adapter_config.json is not valid JSON: {exc}.", "config") from None
    if not isinstance(config, dict):
        raise _invalid("adapter_config.json is not a JSON object.", "config")
    if config.get("r", rank) != rank or isinstance(config.get("r"), bool):
        raise _invalid(f"adapter_config.json has r={config['r']!r}; the pair's LoRA rank is {rank}.", "config")
    return config


@router.get("")
def list_checkpoints(session: SessionDep, org: CurrentOrg,
                     limit: int = Query(default=100, ge=1, le=1000)) -> CheckpointsPublic:
    """List the organization's checkpoints, newest first."""
    rows = queries.list_checkpoints(session, org.id, limit)
    return CheckpointsPublic(data=[CheckpointPublic.model_validate(r) for r in rows], count=len(rows))


@router.get("/{checkpoint_id}")
def get_checkpoint(checkpoint: CheckpointDep) -> CheckpointPublic:
    """One checkpoint."""
    return CheckpointPublic.model_validate(checkpoint)


@router.delete("/{checkpoint_id}", responses={409: {"model": ErrorResponse}})
def delete_checkpoint(checkpoint: CheckpointDep, session: SessionDep, store: StoreDep) -> CheckpointDeleted:
    """Delete a checkpoint not used by a queued or running upgrade (its blob too, once unreferenced)."""
    blobs = sorted({checkpoint.sha256, checkpoint.prompts_sha256} - {None})
    for blob in blobs:  # an upload of the same bytes or an upgrade reading them waits, or went first
        queries.lock_blob(session, blob)
    if queries.checkpoint_in_use(session, checkpoint):
        raise ApiError(Code.conflict, f"Checkpoint {checkpoint.id!r} is used by a queued or running upgrade.")
    session.delete(checkpoint)
    session.flush()
    gone = [sha for sha in blobs if not queries.blob_referenced(session, sha)]
    with ExitStack() as removing:  # the unreferenced blobs go with the commit, under their locks
        for sha in gone:
            removing.enter_context(store.removing(sha))
        session.commit()
    return CheckpointDeleted(id=checkpoint.id)
