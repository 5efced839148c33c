"""The provider's jobs' plain functions, called directly (no Celery): real database, real pair folder, real
fine-tunes (short ones)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import pytest
from sqlalchemy import select

from app.config import Settings, get_settings
from app.db import queries, training
from app.db.migrate import upgrade_head
from app.db.session import session_scope
from app.db.tables import GTTraining, ShadowBuild, ShadowChunk
from models.pairs import PairStore
from models.recipes import provider_plan
from tests.conftest import use_settings
from workers.training import run_chunk, run_gt_training, sweep

pytestmark = pytest.mark.slow
SETTINGS = {"steps": 6, "keep_last": 2, "subset_size": 48, "batch_size": 8}


@pytest.fixture
def settings(service_env: Settings, toy_copy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = use_settings(monkeypatch, pairs_dir=str(toy_copy_dir), job_lease_s="30")
    upgrade_head()
    return settings


def new_build(task: str = "rotate-6", runs: int = 5, chunk: int = 2) -> tuple[str, list[int], object]:
    pair = PairStore(get_settings().pairs_dir).get("toy")
    plan = provider_plan("toy", task, runs, 3000, SETTINGS)
    with session_scope() as s:
        org, _ = queries.create_key(s, "provider", admin=True)
        build, chunks = training.create_build(s, org.id, "toy", task, asdict(plan), plan.key(), runs, set(), chunk)
    return build.id, chunks, plan.folder(pair)


def build_row(build_id: str) -> ShadowBuild:
    with session_scope() as s:
        return s.get(ShadowBuild, build_id)


def runs_on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_build_finishes_with_exactly_its_runs_however_often_chunks_arrive(settings: Settings):
    build_id, chunks, folder = new_build()
    for chunk in chunks:
        run_chunk(chunk, "w1")
    run_chunk(chunks[0], "w2")  # a duplicate delivery: nothing to do
    done = build_row(build_id)
    assert (done.status, done.done, done.total) == ("succeeded", 5, 5), done.error_message
    assert runs_on_disk(folder) == [f"{i:04d}.safetensors" for i in range(5)]  # no temporary files
    with session_scope() as s:
        events = [e.message for e in training.events(s, build_id)]
        attempts = s.scalars(select(ShadowChunk.attempts).where(ShadowChunk.build_id == build_id)).all()
    assert attempts == [1, 1, 1] and events[-1] == "all 5 runs on disk"


def test_a_lost_workers_chunk_is_sent_again_and_redone(settings: Settings, monkeypatch: pytest.MonkeyPatch):
    build_id, chunks, folder = new_build(runs=2, chunk=2)
    with session_scope() as s:
        assert training.claim_chunk(s, chunks[0], "dead-worker", 30) is not None  # claimed, then the worker died
    assert sweep() == []  # its lease has not run out yet
    use_settings(monkeypatch, job_lease_s="0.5")
    time.sleep(0.6)
    assert sweep() == [f"shadow_chunks:{chunks[0]}"]  # back to queued, and sent to the broker again
    run_chunk(chunks[0], "w2")
    done = build_row(build_id)
    assert (done.status, done.done) == ("succeeded", 2) and len(runs_on_disk(folder)) == 2
    with session_scope() as s:
        chunk = s.get(ShadowChunk, chunks[0])
        events = [e.message for e in training.events(s, build_id)]
    assert chunk.attempts == 2 and any("worker lost" in m for m in events)


def test_a_failing_chunk_fails_its_build_and_cancel_stops_the_rest(settings: Settings):
    build_id, chunks, _ = new_build(task="nope-3", runs=3, chunk=1)  # no such task: the chunk cannot run
    run_chunk(chunks[0], "w1")
    failed = build_row(build_id)
    assert failed.status == "failed" and failed.error_code == "not_found" and "nope-3" in failed.error_message
    with session_scope() as s:
        statuses = s.scalars(select(ShadowChunk.status).where(ShadowChunk.build_id == build_id)
                             .order_by(ShadowChunk.id)).all()
    assert statuses == ["failed", "cancelled", "cancelled"]

    build_id, chunks, folder = new_build(runs=2, chunk=1)
    with session_scope() as s:
        training.claim_chunk(s, chunks[0], "w1", 30)
        assert training.cancel_build(s, s.get(ShadowBuild, build_id))
    assert build_row(build_id).status == "running"  # its running chunk stops at its next step
    with session_scope() as s:
        assert not training.chunk_held(s, chunks[0], "w1")
        training.stop_chunk(s, chunks[0], "w1")
    assert build_row(build_id).status == "cancelled" and runs_on_disk(folder) == []


def test_a_gt_training_makes_a_version_with_its_card(settings: Settings):
    build_id, chunks, _ = new_build(runs=3, chunk=3)
    run_chunk(chunks[0], "w1")
    with session_scope() as s:
        build = s.get(ShadowBuild, build_id)
        row = training.create_training(s, build.org_id, "toy", ["rotate-6"], "rotate-6", [build.plan],
                                       {"steps": 40, "d_model": 32, "max_test": 6})
    run_gt_training(row.id, "w1")
    run_gt_training(row.id, "w2")  # a duplicate delivery
    with session_scope() as s:
        done = s.get(GTTraining, row.id)
        stages = [e.stage for e in training.events(s, row.id)]
    assert (done.status, done.progress, done.attempts) == ("succeeded", 1.0, 1), done.error_message
    assert len(done.version) == 12 and done.card["summary"]["heldout_runs"] == 1
    assert done.card["tests"]["rotate-6"]["n_test"] == 6 and stages[-1] == "succeeded"
    pair = PairStore(settings.pairs_dir).get("toy")
    assert (pair.root / "gt_versions" / "rotate-6" / done.version / "model.safetensors").is_file()
    assert "rotate-6" not in pair.gt_ids()  # not in service until activated
