"""The provider's GTs: trainings (each makes a version with its card) and activation of a version."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app import queue
from app.api.deps import AdminOrg, PairsDep, SessionDep
from app.db import training
from app.db.tables import GTTraining, Organization
from app.errors import ApiError, Code, not_found
from app.pairs import PairCatalog
from app.schemas.admin import (
    AdminEvent,
    AdminEvents,
    GTActivate,
    GTTrainingCreate,
    GTTrainingPublic,
    GTTrainingsPublic,
    GTVersionPublic,
    GTVersionsPublic,
)
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.upgrades import UpgradeError

log = logging.getLogger(__name__)
_FORBIDDEN = {403: {"model": ErrorResponse, "description": "Not an admin key"}}
router = APIRouter(prefix="/v1/admin/gt-trainings", tags=["admin"], responses={**ERROR_RESPONSES, **_FORBIDDEN})
gts_router = APIRouter(prefix="/v1/admin/gts", tags=["admin"], responses={**ERROR_RESPONSES, **_FORBIDDEN})


def to_public(session: Session, row: GTTraining, *, with_events: bool = True) -> GTTrainingPublic:
    error = UpgradeError(code=row.error_code or "error", message=row.error_message or "") \
        if row.error_message else None
    events = [AdminEvent.model_validate(e) for e in training.events(session, row.id)] if with_events else []
    return GTTrainingPublic(id=row.id, pair=row.pair, tasks=row.tasks, gt_id=row.gt_id, status=row.status,
                            progress=row.progress, stage=row.stage, version=row.version, card=row.card, error=error,
                            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
                            events=events)


def load_training(training_id: str, session: SessionDep, _admin: AdminOrg) -> GTTraining:
    row = session.get(GTTraining, training_id)
    if row is None:
        raise not_found("GT training", training_id)
    return row


@router.post("", status_code=202, responses={409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def create_gt_training(body: GTTrainingCreate, session: SessionDep, admin: AdminOrg,
                             pairs: PairsDep) -> GTTrainingPublic:
    """Train a GT on each task's newest finished shadow build; the result is a version, not yet in service."""
    return await run_in_threadpool(_create, body, session, admin, pairs)


def _create(body: GTTrainingCreate, session: Session, admin: Organization, pairs: PairCatalog) -> GTTrainingPublic:
    from models.errors import NotFoundError
    from models.pairs import ALL_TASKS
    from models.pairs.tasks import task_info

    pair = pairs.get(body.pair)
    if len(set(body.tasks)) != len(body.tasks):
        raise ApiError(Code.invalid_request, "A task is listed twice.", param="tasks")
    plans = []
    for index, task in enumerate(body.tasks):
        try:
            task_info(pair, task)
        except NotFoundError as exc:
            raise ApiError(Code.not_found, f"{exc}.", param=f"tasks.{index}") from None
        build = training.latest_build(session, pair.id, task)
        if build is None:
            raise ApiError(Code.conflict, f"Task {task!r} has no finished shadow build on {pair.id!r}: build its "
                           "shadow runs first (POST /v1/admin/shadow-builds).", param=f"tasks.{index}")
        plans.append(build.plan)
    gt_id = body.gt_id or (body.tasks[0] if len(body.tasks) == 1 else ALL_TASKS)
    options = body.model_dump(include={"steps", "d_model", "max_test"}, exclude_none=True)
    if options.get("d_model", 4) % 4:
        raise ApiError(Code.invalid_settings, "d_model must be a multiple of 4 (the network's heads).",
                       param="d_model")
    row = training.create_training(session, admin.id, pair.id, body.tasks, gt_id, plans, options)
    session.commit()
    try:
        queue.send(queue.GT_TRAIN_TASK, training_id=row.id)
    except Exception as exc:
        log.exception("could not queue %s", row.id)
        training.cancel_training(session, row)
        session.commit()
        raise ApiError(Code.queue_unavailable, f"The task queue is unreachable ({exc}); nothing started.") from None
    return to_public(session, row)


@router.get("")
def list_gt_trainings(session: SessionDep, _admin: AdminOrg,
                      limit: int = Query(default=100, ge=1, le=1000)) -> GTTrainingsPublic:
    """GT trainings, newest first (without their events)."""
    rows = training.list_rows(session, GTTraining, limit)
    return GTTrainingsPublic(data=[to_public(session, r, with_events=False) for r in rows], count=len(rows))


@router.get("/{training_id}")
def get_gt_training(training_id: str, session: SessionDep, _admin: AdminOrg) -> GTTrainingPublic:
    """One training: status, progress, the version it made and its card."""
    return to_public(session, load_training(training_id, session, _admin))


@router.get("/{training_id}/events")
def list_gt_training_events(training_id: str, session: SessionDep, _admin: AdminOrg,
                            after: int = Query(default=0, ge=0, description="Only events with a larger id.")
                            ) -> AdminEvents:
    """A training's events in order; poll with `after` set to the last id seen."""
    load_training(training_id, session, _admin)
    rows = training.events(session, training_id, after)
    return AdminEvents(data=[AdminEvent.model_validate(e) for e in rows], count=len(rows))


@router.post("/{training_id}/cancel", responses={409: {"model": ErrorResponse}})
def cancel_gt_training(training_id: str, session: SessionDep, _admin: AdminOrg) -> GTTrainingPublic:
    """Cancel a queued training now, or a running one at its next stage."""
    row = load_training(training_id, session, _admin)
    if not training.cancel_training(session, row):
        raise ApiError(Code.conflict, f"GT training {row.id!r} already {row.status}; nothing to cancel.")
    session.commit()
    return to_public(session, row)


def version_public(gt_id: str, row: dict) -> GTVersionPublic:
    card = row.get("card") or {}
    return GTVersionPublic(gt_id=gt_id, version=row["version"], active=row["active"],
                           tasks=list(row["config"].get("tasks", [])), training_id=row["config"].get("training_id"),
                           card_summary=card.get("summary"))


@gts_router.get("/{pair_id}")
async def list_gt_versions(pair_id: str, _admin: AdminOrg, pairs: PairsDep) -> GTVersionsPublic:
    """Every GT of a pair: the versions in service and the stored ones."""
    def collect() -> list[GTVersionPublic]:
        from models.gt.versions import list_versions

        pair = pairs.get(pair_id, param=None)
        names = sorted({*pair.gt_ids(), *(p.name for p in (pair.root / "gt_versions").glob("*") if p.is_dir())})
        return [version_public(name, row) for name in names for row in list_versions(pair, name)]

    data = await run_in_threadpool(collect)
    return GTVersionsPublic(data=data, count=len(data))


@gts_router.post("/{pair_id}/{gt_id}/activate")
async def activate_gt(pair_id: str, gt_id: str, body: GTActivate, _admin: AdminOrg, pairs: PairsDep
                      ) -> GTVersionPublic:
    """Put a trained version in service: upgrades that resolve `gt_id` use it from now on."""
    def activate() -> GTVersionPublic:
        from models.errors import NotFoundError
        from models.gt.versions import activate, list_versions

        pair = pairs.get(pair_id, param=None)
        try:
            activate(pair, gt_id, body.version)
        except NotFoundError as exc:
            raise ApiError(Code.not_found, f"{exc}.", param="version") from None
        return version_public(gt_id, next(r for r in list_versions(pair, gt_id) if r["active"]))

    return await run_in_threadpool(activate)
