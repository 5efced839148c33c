"""The provider's jobs as plain functions: one chunk of a shadow build, one GT training, and their sweeper.

A chunk trains its runs in one loop and writes each run's file atomically; a worker killed mid-chunk leaves
no file of it, its lease runs out, and the sweeper sends the chunk again: the next worker trains what is
missing (files already written are kept). The database owns every state; Celery carries only ids.
Models are imported on first use, inside the forked worker process.
"""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded

from app import queue
from app.config import get_settings
from app.db import training
from app.db.session import session_scope
from app.db.tables import GTTraining, JobStatus, ShadowChunk
from workers.lease import Lease, beat

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The build or training was cancelled, or another worker took it over."""


class TrainingLease(Lease):
    """A lease whose `check` is an `on_step` callback for the training loops."""

    def check(self, *_: object) -> None:
        """An `on_step` callback: raise Stopped once the lease is lost."""
        if self.stopped.is_set():
            raise Stopped


def run_chunk(chunk_id: int, worker: str) -> None:
    """Train one chunk of a shadow build; safe to run twice (a finished or held chunk is left alone)."""
    settings = get_settings()
    with session_scope() as session:
        claim = training.claim_chunk(session, chunk_id, worker, settings.job_lease_s)
    if claim is None:
        log.info("chunk %s is finished, held by a live worker, or cancelled; nothing to do", chunk_id)
        return
    try:
        with TrainingLease(beat(training.chunk_held, chunk_id, worker), settings.job_lease_s / 4,
                           str(chunk_id)) as lease:
            from models.pairs import PairStore
            from models.training.shadow import ShadowPlan, run_subsets

            pair = PairStore(settings.pairs_dir).get(claim.pair)
            run_subsets(str(pair.root), ShadowPlan.from_dict(claim.plan), claim.indices, on_step=lease.check)
        with session_scope() as session:
            training.finish_chunk(session, chunk_id, worker)
    except Stopped:
        with session_scope() as session:
            training.stop_chunk(session, chunk_id, worker)
    except Exception as exc:
        _failed(ShadowChunk, chunk_id, worker, exc)


def run_gt_training(training_id: str, worker: str) -> None:
    """Train a GT version and its card; safe to run twice."""
    settings = get_settings()
    with session_scope() as session:
        row = training.claim_training(session, training_id, worker, settings.job_lease_s)
    if row is None:
        log.info("GT training %s is finished, held or cancelled; nothing to do", training_id)
        return
    try:
        with TrainingLease(beat(training.training_held, training_id, worker), settings.job_lease_s / 4,
                           training_id) as lease:
            version, card = _train(row, worker, lease)
        with session_scope() as session:
            training.finish_training(session, training_id, worker, JobStatus.succeeded,
                                     f"stored version {version} of GT {row.gt_id!r} (not active until activated)",
                                     version, card)
    except Stopped:
        with session_scope() as session:
            row_now = session.get(GTTraining, training_id)
            if row_now is not None and row_now.cancel_requested:
                training.finish_training(session, training_id, worker, JobStatus.cancelled, "cancelled while running")
    except Exception as exc:
        _failed(GTTraining, training_id, worker, exc)


def _train(row: GTTraining, worker: str, lease: TrainingLease) -> tuple[str, dict]:
    from models.gt.card import CardConfig
    from models.gt.publish import train_version
    from models.pairs import PairStore
    from models.recipes import provider_recipe
    from models.training.shadow import ShadowPlan

    settings = get_settings()
    pair = PairStore(settings.pairs_dir).get(row.pair)
    cfg = gt_config(provider_recipe(pair.id).gt, row.options)

    def report(fraction: float, stage: str) -> None:
        lease.check()
        with session_scope() as session:
            if not training.training_progress(session, row.id, worker, 0.02 + 0.96 * fraction, stage):
                raise Stopped

    plans = [ShadowPlan.from_dict(p) for p in row.plans]
    card_cfg = CardConfig(max_test=row.options.get("max_test", CardConfig.max_test))
    return train_version(pair, row.gt_id, plans, cfg, card_cfg, report, {"training_id": row.id})


def gt_config(base, options: dict):  # -> GTTrainConfig (models load lazily)
    """The recipe's GT settings with a training's options (steps; the network's width)."""
    from dataclasses import replace

    from models.gt.network import GTArch

    cfg = replace(base, **{k: options[k] for k in ("steps", "eval_every") if options.get(k)})
    if options.get("d_model"):
        cfg = replace(cfg, arch=GTArch(d_model=options["d_model"], d_ff=4 * options["d_model"]))
    return replace(cfg, eval_every=min(cfg.eval_every, cfg.steps))


def _failed(table: type, row_id: int | str, worker: str, exc: Exception) -> None:
    from models.errors import GradliftError

    if isinstance(exc, SoftTimeLimitExceeded):
        code, message = "timeout", f"ran past the time limit of {get_settings().job_time_limit_s}s"
    else:
        if not isinstance(exc, GradliftError):
            log.exception("%s %s failed", table.__tablename__, row_id)
        code = {"NotFoundError": "not_found", "ConfigError": "invalid_config",
                "DataFileError": "invalid_data"}.get(type(exc).__name__, "internal_error")
        message = str(exc) or type(exc).__name__
    with session_scope() as session:
        training.fail(session, table, row_id, worker, code, message)


def sweep() -> list[str]:
    """Send again the chunks and trainings whose worker stopped sending heartbeats; their ids."""
    lease_s = get_settings().job_lease_s
    sent = []
    for table, task in ((ShadowChunk, queue.SHADOW_CHUNK_TASK), (GTTraining, queue.GT_TRAIN_TASK)):
        with session_scope() as session:
            stale = training.stale_ids(session, table, lease_s)
        for row_id in stale:
            with session_scope() as session:  # sent before the commit: a failed send stays stale, swept again
                if training.requeue(session, table, row_id, lease_s):
                    queue.send(task, **{"chunk_id" if table is ShadowChunk else "training_id": row_id})
                    sent.append(f"{table.__tablename__}:{row_id}")
    if sent:
        log.warning("requeued the work of lost workers: %s", ", ".join(sent))
    return sent
