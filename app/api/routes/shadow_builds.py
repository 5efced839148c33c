"""The provider's shadow builds: a task's shadow runs, in chunks that any number of training workers take."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app import queue
from app.api.deps import AdminOrg, PairsDep, SessionDep
from app.db import training
from app.db.tables import Organization, ShadowBuild
from app.errors import ApiError, Code, not_found
from app.pairs import PairCatalog
from app.schemas.admin import AdminEvent, AdminEvents, ShadowBuildCreate, ShadowBuildPublic, ShadowBuildsPublic
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.upgrades import UpgradeError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/admin/shadow-builds", tags=["admin"],
                   responses={**ERROR_RESPONSES, 403: {"model": ErrorResponse, "description": "Not an admin key"}})


def to_public(session: Session, build: ShadowBuild, *, with_events: bool = True) -> ShadowBuildPublic:
    error = UpgradeError(code=build.error_code or "error", message=build.error_message or "") \
        if build.error_message else None
    events = [AdminEvent.model_validate(e) for e in training.events(session, build.id)] if with_events else []
    return ShadowBuildPublic(id=build.id, pair=build.pair, task=build.task, status=build.status, done=build.done,
                             total=build.total, reused=build.reused, plan_key=build.plan_key, plan=build.plan,
                             chunks=training.chunk_counts(session, build.id), error=error,
                             created_at=build.created_at, started_at=build.started_at,
                             finished_at=build.finished_at, events=events)


def load_build(build_id: str, session: SessionDep, _admin: AdminOrg) -> ShadowBuild:
    row = session.get(ShadowBuild, build_id)
    if row is None:
        raise not_found("shadow build", build_id)
    return row


@router.post("", status_code=202, responses={503: {"model": ErrorResponse}})
async def create_shadow_build(body: ShadowBuildCreate, session: SessionDep, admin: AdminOrg,
                              pairs: PairsDep) -> ShadowBuildPublic:
    """Queue the missing shadow runs of a task (runs already on disk are reused) as chunks on the train queue."""
    return await run_in_threadpool(_create, body, session, admin, pairs)


def _create(body: ShadowBuildCreate, session: Session, admin: Organization, pairs: PairCatalog) -> ShadowBuildPublic:
    from dataclasses import asdict

    from models.errors import ConfigError, NotFoundError
    from models.pairs.tasks import task_info
    from models.recipes import provider_plan, provider_recipe

    pair = pairs.get(body.pair)
    try:
        info = task_info(pair, body.task)
    except NotFoundError as exc:
        raise ApiError(Code.not_found, f"{exc}.", param="task") from None
    overrides = body.model_dump(exclude={"pair", "task", "runs", "chunk_size"}, exclude_none=True)
    try:
        plan = provider_plan(pair.id, body.task, body.runs, info.n_public, overrides)
    except (ConfigError, ValueError) as exc:
        raise ApiError(Code.invalid_settings, f"{exc}.") from None
    existing = {i for i in range(body.runs) if plan.run_path(pair, i).is_file()}
    chunk_size = body.chunk_size or provider_recipe(pair.id).batch_runs
    build, chunk_ids = training.create_build(session, admin.id, pair.id, body.task, asdict(plan), plan.key(),
                                             body.runs, existing, chunk_size)
    session.commit()
    try:
        for chunk_id in chunk_ids:
            queue.send(queue.SHADOW_CHUNK_TASK, chunk_id=chunk_id)
    except Exception as exc:
        log.exception("could not queue the chunks of %s", build.id)
        training.cancel_build(session, build)
        session.commit()
        raise ApiError(Code.queue_unavailable, f"The task queue is unreachable ({exc}); the build did not start.") \
            from None
    return to_public(session, build)


@router.get("")
def list_shadow_builds(session: SessionDep, _admin: AdminOrg,
                       limit: int = Query(default=100, ge=1, le=1000)) -> ShadowBuildsPublic:
    """Shadow builds, newest first (without their events)."""
    rows = training.list_rows(session, ShadowBuild, limit)
    return ShadowBuildsPublic(data=[to_public(session, b, with_events=False) for b in rows], count=len(rows))


@router.get("/{build_id}")
def get_shadow_build(build_id: str, session: SessionDep, _admin: AdminOrg) -> ShadowBuildPublic:
    """One build: status, runs done of total, chunks by status, events."""
    return to_public(session, load_build(build_id, session, _admin))


@router.get("/{build_id}/events")
def list_shadow_build_events(build_id: str, session: SessionDep, _admin: AdminOrg,
                             after: int = Query(default=0, ge=0, description="Only events with a larger id.")
                             ) -> AdminEvents:
    """A build's events in order; poll with `after` set to the last id seen."""
    load_build(build_id, session, _admin)
    rows = training.events(session, build_id, after)
    return AdminEvents(data=[AdminEvent.model_validate(e) for e in rows], count=len(rows))


@router.post("/{build_id}/cancel", responses={409: {"model": ErrorResponse}})
def cancel_shadow_build(build_id: str, session: SessionDep, _admin: AdminOrg) -> ShadowBuildPublic:
    """Cancel a build: its queued chunks now, the running ones at their next training step."""
    build = load_build(build_id, session, _admin)
    if not training.cancel_build(session, build):
        raise ApiError(Code.conflict, f"Shadow build {build.id!r} already {build.status}; nothing to cancel.")
    session.commit()
    return to_public(session, build)
