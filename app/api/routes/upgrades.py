"""Upgrade jobs: made from checkpoints, run by a worker, followed through progress and events."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import prompts, queue
from app.api import idempotency
from app.api.deps import (
    CurrentOrg,
    IdempotencyKey,
    JobDep,
    PairsDep,
    SessionDep,
    StoreDep,
    joined_collaboration,
)
from app.db import jobs, queries
from app.db.tables import Job, Organization
from app.errors import ApiError, Code, not_found
from app.pairs import PairCatalog
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.upgrades import (
    UpgradeCreate,
    UpgradeError,
    UpgradeEvent,
    UpgradeEvents,
    UpgradePublic,
    UpgradesPublic,
)
from app.storage import BlobStore

if TYPE_CHECKING:
    from models.pairs import Pair

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/upgrades", tags=["upgrades"], responses=ERROR_RESPONSES)

SCOPE = "POST /v1/upgrades"
# Below two, a "pooled" upgrade is one organization's own upgrade handed to organizations that gave nothing.
MIN_POOLED = 2
EVENT_IDS_BELOW = 2**63  # ids are 64-bit integers in the database; a larger `after` could not be compared


def to_public(session: Session, job: Job, *, with_events: bool = True) -> UpgradePublic:
    delta = jobs.delta_for_job(session, job.id)
    error = UpgradeError(code=job.error_code or "error", message=job.error_message or "") \
        if job.error_message else None
    events = [UpgradeEvent.model_validate(e) for e in jobs.events(session, job.id)] if with_events else []
    return UpgradePublic(id=job.id, pair=job.pair, task=job.task, gt_id=job.gt_id, mode=job.mode,
                         prompts_count=job.prompts_count, quality=delta.quality if delta else None,
                         status=job.status,
                         checkpoint_ids=[item["id"] for item in job.inputs],
                         collaboration_id=job.collaboration_id, progress=job.progress,
                         stage=job.stage, error=error, delta_id=delta.id if delta else None,
                         attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
                         finished_at=job.finished_at, events=events)


@router.post("", responses={403: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                            503: {"model": ErrorResponse}})
def create_upgrade(body: UpgradeCreate, session: SessionDep, org: CurrentOrg, pairs: PairsDep, store: StoreDep,
                   key: IdempotencyKey = None) -> UpgradePublic:
    """Queue an upgrade of the caller's checkpoints, or of a collaboration's contributions (averaged)."""
    print_ = idempotency.fingerprint(body.model_dump_json(exclude_defaults=True))
    if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is not None:
        return _as_now(session, org, made)
    pair = pairs.get(body.pair)
    if body.collaboration_id is not None:
        inputs, participants = _pooled_inputs(session, org, body.collaboration_id, pair.id)
    else:
        inputs, participants = _own_inputs(session, org, body.checkpoint_ids or [], pair.id), []
    gt_id = _gt_for(pairs, pair, body, [item["privacy"] for item in inputs])
    attached = _prompts(session, org, body, store)
    job = jobs.create_job(session, org.id, pair.id, body.task, gt_id, inputs, body.collaboration_id, participants,
                          mode=body.mode, prompts=attached)
    public = to_public(session, job)
    idempotency.remember(session, org.id, SCOPE, key, print_, public)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key won
        session.rollback()
        if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is None:
            raise
        return _as_now(session, org, made)
    _enqueue(session, job)
    return public


def _as_now(session: Session, org: Organization, job_id: str) -> UpgradePublic:
    job = jobs.get_job(session, org.id, job_id)
    if job is None:
        raise idempotency.gone("upgrade", job_id)
    return to_public(session, job)


def _gt_for(pairs: PairCatalog, pair: Pair, body: UpgradeCreate, privacies: list) -> str | None:
    """The GT the job may use: none for distillation; for `auto`, none when no GT covers the task."""
    if body.mode == "distill":
        return None
    try:
        return pairs.choose_gt(pair, body.task, privacies)
    except ApiError:
        if body.mode == "gt":
            raise
        return None


def _prompts(session: Session, org: Organization, body: UpgradeCreate, store: BlobStore
             ) -> tuple[str, int] | None:
    """(blob, count) of the prompts to probe and distill with: the request's, else those attached to the
    first of its checkpoints that has some (pooled upgrades use the pair's public prompts)."""
    if body.prompts is not None:
        parsed = prompts.parse_inline(body.prompts, "prompts")
        queries.lock_blob(session, hashlib.sha256(prompts.encode(parsed)).hexdigest())  # until the job is committed
        return prompts.store(store, parsed)
    for checkpoint_id in body.checkpoint_ids or []:
        checkpoint = queries.get_checkpoint(session, org.id, checkpoint_id)
        if checkpoint is not None and checkpoint.prompts_sha256:
            return checkpoint.prompts_sha256, checkpoint.prompts_count or 0
    return None


def _own_inputs(session: Session, org: Organization, checkpoint_ids: list[str], pair_id: str
                ) -> list[dict[str, Any]]:
    """The caller's own checkpoints, in the order given. Their blobs' locks are held until the job commits
    (taken in one order, so two upgrades never wait on each other): a delete waits, or went first and
    the checkpoint, read again, is gone."""
    if len(set(checkpoint_ids)) != len(checkpoint_ids):
        raise ApiError(Code.invalid_request, "A checkpoint is listed twice.", param="checkpoint_ids")
    found = (queries.get_checkpoint(session, org.id, checkpoint_id) for checkpoint_id in checkpoint_ids)
    for sha256 in sorted({checkpoint.sha256 for checkpoint in found if checkpoint is not None}):
        queries.lock_blob(session, sha256)
    inputs = []
    for index, checkpoint_id in enumerate(checkpoint_ids):
        checkpoint = queries.get_checkpoint(session, org.id, checkpoint_id)
        param = f"checkpoint_ids.{index}"
        if checkpoint is None:
            raise not_found("checkpoint", checkpoint_id, param=param, code=Code.checkpoint_not_found)
        if checkpoint.pair != pair_id:
            raise ApiError(Code.invalid_request, f"Checkpoint {checkpoint_id!r} was made for pair "
                           f"{checkpoint.pair!r}, not {pair_id!r}.", param=param)
        inputs.append({"id": checkpoint.id, "sha256": checkpoint.sha256, "privacy": checkpoint.privacy})
    return inputs


def _pooled_inputs(session: Session, org: Organization, collaboration_id: str, pair_id: str
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every contribution of a collaboration the caller has joined and contributed to, from at least two
    organizations; and those organizations, the upgrade's participants."""
    collaboration = joined_collaboration(session, org, collaboration_id, param="collaboration_id")
    if collaboration.pair != pair_id:
        raise ApiError(Code.invalid_request, f"Collaboration {collaboration_id!r} pools pair "
                       f"{collaboration.pair!r}, not {pair_id!r}.", param="pair")
    inputs, locked = queries.pooled_inputs(session, collaboration_id), set()
    while unlocked := {item["sha256"] for item in inputs} - locked:  # held until the job commits, as for own
        for sha256 in sorted(unlocked):
            queries.lock_blob(session, sha256)
        locked |= unlocked
        inputs = queries.pooled_inputs(session, collaboration_id)
    if len(inputs) < MIN_POOLED:  # one contribution per organization
        raise ApiError(Code.conflict, f"A pooled upgrade needs contributions from at least {MIN_POOLED} "
                       f"organizations; collaboration {collaboration_id!r} has {len(inputs)}.",
                       param="collaboration_id")
    participants = [item.pop("org_id") for item in inputs]
    if org.id not in participants:
        raise ApiError(Code.conflict, "A pooled upgrade belongs to the members whose contributions go into it; "
                       f"contribute a checkpoint to {collaboration_id!r} first.", param="collaboration_id")
    return inputs, participants


def _enqueue(session: Session, job: Job) -> None:
    """Send the job id after the commit; a job the queue refused is failed, not left queued forever (one
    the API never sent, dying first, is sent by the workers' sweeper a lease later)."""
    try:
        queue.send(queue.UPGRADE_TASK, job_id=job.id)
    except Exception as exc:
        log.exception("could not queue %s", job.id)
        jobs.fail(session, job.id, None, Code.queue_unavailable.value, f"task queue unreachable: {exc}")
        session.commit()
        message = "The task queue is unreachable; the upgrade did not start."
        raise ApiError(Code.queue_unavailable, message) from None
    jobs.mark_sent(session, job.id)
    session.commit()


@router.get("")
def list_upgrades(session: SessionDep, org: CurrentOrg,
                  limit: int = Query(default=100, ge=1, le=1000)) -> UpgradesPublic:
    """List the organization's upgrades, newest first (without their events)."""
    rows = jobs.list_jobs(session, org.id, limit)
    return UpgradesPublic(data=[to_public(session, j, with_events=False) for j in rows], count=len(rows))


@router.get("/{upgrade_id}")
def get_upgrade(job: JobDep, session: SessionDep) -> UpgradePublic:
    """One upgrade: status, progress, stage, error, delta id and events."""
    return to_public(session, job)


@router.get("/{upgrade_id}/events")
def list_upgrade_events(job: JobDep, session: SessionDep,
                        after: int = Query(default=0, ge=0, lt=EVENT_IDS_BELOW,
                                                   description="Only events with a larger id.")
                        ) -> UpgradeEvents:
    """An upgrade's events in order; poll with `after` set to the last id seen."""
    rows = jobs.events(session, job.id, after)
    return UpgradeEvents(data=[UpgradeEvent.model_validate(e) for e in rows], count=len(rows))


@router.post("/{upgrade_id}/cancel", responses={409: {"model": ErrorResponse}})
def cancel_upgrade(job: JobDep, session: SessionDep) -> UpgradePublic:
    """Cancel a queued upgrade now, or a running one at its worker's next step."""
    if not jobs.request_cancel(session, job):
        raise ApiError(Code.conflict, f"Upgrade {job.id!r} already {job.status}; nothing to cancel.")
    session.commit()
    return to_public(session, job)
