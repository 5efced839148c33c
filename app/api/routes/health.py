"""Liveness, readiness (database, broker, storage) and Prometheus metrics (off unless turned on); no key needed."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select, text

from app import queue
from app.api.deps import SettingsDep
from app.config import Settings
from app.db.session import new_session
from app.db.tables import Job
from app.errors import ApiError, Code
from app.schemas.common import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def get_health() -> dict[str, str]:
    """The process answers (on the event loop itself: no worker thread, so it answers while they are busy)."""
    return {"status": "ok"}


def _checks(settings: Settings) -> dict[str, str]:
    results: dict[str, str] = {}
    try:
        with new_session(settings.database_url) as session:
            session.execute(text("SELECT 1"))
        results["database"] = "ok"
    except Exception as exc:
        results["database"] = f"error: {type(exc).__name__}"
    try:
        queue.ping()
        results["broker"] = "ok"
    except Exception as exc:
        results["broker"] = f"error: {type(exc).__name__}"
    try:
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.tmp_dir / f"ready-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
        results["storage"] = "ok"
    except OSError as exc:
        results["storage"] = f"error: {type(exc).__name__}"
    return results


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable"}})
async def get_ready(settings: SettingsDep) -> JSONResponse:
    """The database, the broker and the storage answer."""
    checks = await run_in_threadpool(_checks, settings)
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={404: {"model": ErrorResponse, "description": "Metrics are off (GRADLIFT_METRICS)"}})
def get_metrics(settings: SettingsDep) -> Response:
    """Prometheus text format: upgrade jobs by status, of every organization together. Off unless
    GRADLIFT_METRICS is set (it needs no key: serve it where only the operators' scraper reaches)."""
    if not settings.metrics:
        raise ApiError(Code.not_found, "Metrics are off; the operators turn them on with GRADLIFT_METRICS=true.")
    registry = CollectorRegistry()
    gauge = Gauge("gradlift_upgrades", "Upgrade jobs by status", ["status"], registry=registry)
    with new_session(settings.database_url) as session:
        for status, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
            gauge.labels(status=status).set(count)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
