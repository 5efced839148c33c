"""The FastAPI application (`uvicorn app.main:create_app --factory`)."""

from __future__ import annotations

import logging
import sys

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.api.deps import current_org
from app.api.guard import RequestGuard
from app.api.openapi import with_exact_errors
from app.api.routes import (
    admin_tasks,
    chat,
    checkpoints,
    collaborations,
    completions,
    console,
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
    # The process decodes chat requests in a thread that holds the GIL for long stretches of Python; the
    # event loop gets it back within this interval (5 ms by default: under a crowd of chats that made
    # /healthz wait about three times longer, python -m bench.load).
    sys.setswitchinterval(0.001)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # /docs loads Swagger UI from the fastapi-offline package, not from a CDN, and asks no online validator
    # for a badge; /redoc is the console's (`app.api.routes.console`).
    app = FastAPIOffline(title="gradlift", version="0.1.0", redoc_url=None,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Lift a TinyLM LoRA update to an LLM adapter with a Gradient Transformer.")
    install_error_handler(app)
    routers = [m.router for m in (health, organizations, pairs, checkpoints, collaborations, upgrades, deltas,
                                  models, chat, completions, admin_tasks, shadow_builds, gt_trainings, console)]
    routers.append(gt_trainings.gts_router)
    for router in routers:
        app.include_router(router)
    app.openapi = with_exact_errors(app, routers)  # type: ignore[method-assign]
    app.add_middleware(RequestGuard, routes=[route for router in routers for route in router.routes],
                       key_dependency=current_org, streamed={checkpoints.create_checkpoint})
    return app
