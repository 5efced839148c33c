"""The FastAPI application (`uvicorn app.main:create_app --factory`)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app.api.openapi import with_exact_errors
from app.api.routes import (
    admin_tasks,
    chat,
    checkpoints,
    collaborations,
    deltas,
    gt_trainings,
    health,
    models,
    organizations,
    pairs,
    shadow_builds,
    upgrades,
)
from app.config import get_settings
from app.errors import install_error_handler


def create_app() -> FastAPI:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = FastAPI(title="gradlift", version="0.1.0",
                  description="Lift a TinyLM LoRA update to an LLM adapter with a Gradient Transformer.")
    install_error_handler(app)
    routers = [m.router for m in (health, organizations, pairs, checkpoints, collaborations, upgrades, deltas,
                                  models, chat, admin_tasks, shadow_builds, gt_trainings)]
    routers.append(gt_trainings.gts_router)
    for router in routers:
        app.include_router(router)
    app.openapi = with_exact_errors(app, routers)  # type: ignore[method-assign]
    return app
