"""The upgrade job's plain function, called directly (no Celery): real database, store and ML core."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import jobs, queries
from app.db.migrate import upgrade_head
from app.db.session import session_scope
from app.db.tables import Delta, Job, utcnow
from app.storage import BlobStore
from tests.conftest import use_settings
from workers.upgrade import run_job, sweep

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(service_env: Settings, toy_pairs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = use_settings(monkeypatch, pairs_dir=str(toy_pairs_dir), job_lease_s="30")
    upgrade_head()
    return settings


def new_job(settings: Settings, adapter: Path) -> str:
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    sha, _ = store.put_file(adapter / "adapter_model.safetensors")
    with session_scope() as s:
        org, _ = queries.create_key(s, "acme")
        return jobs.create_job(s, org.id, "toy", None, "all", [{"id": "ckpt_x", "sha256": sha}]).id


def job(job_id: str) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


def delta_count() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Delta))


def test_runs_once_however_often_it_is_delivered(settings: Settings, toy_adapter: Path) -> None:
    job_id = new_job(settings, toy_adapter)
    run_job(job_id, "w1")
    done = job(job_id)
    assert (done.status, done.progress, done.attempts) == ("succeeded", 1.0, 1), done.error_message
    run_job(job_id, "w2")  # a duplicate delivery
    assert delta_count() == 1 and job(job_id).attempts == 1
    with session_scope() as s:
        delta = jobs.delta_for_job(s, job_id)
        stages = [e.stage for e in jobs.events(s, job_id)]
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    assert set(delta.files) == {"adapter_config.json", "adapter_model.safetensors", "update.safetensors"}
    assert all(store.exists(f["sha256"]) for f in delta.files.values())
    assert stages[:2] == ["queued", "starting"] and stages[-1] == "succeeded"
    assert list(settings.tmp_dir.iterdir()) == []  # the job's scratch folder is gone


def test_a_missing_input_fails_with_a_message(settings: Settings, toy_adapter: Path) -> None:
    job_id = new_job(settings, toy_adapter)
    shutil.rmtree(settings.blobs_dir)
    run_job(job_id, "w1")
    failed = job(job_id)
    assert failed.status == "failed" and "missing" in failed.error_message and delta_count() == 0


def test_cancelled_before_start_is_not_run(settings: Settings, toy_adapter: Path) -> None:
    job_id = new_job(settings, toy_adapter)
    with session_scope() as s:
        jobs.request_cancel(s, s.get(Job, job_id))
    run_job(job_id, "w1")
    assert job(job_id).status == "cancelled" and delta_count() == 0


def test_sweep_leaves_live_jobs_alone(settings: Settings, toy_adapter: Path) -> None:
    job_id = new_job(settings, toy_adapter)
    with session_scope() as s:
        jobs.claim(s, job_id, "w1", settings.job_lease_s)
    assert sweep() == [] and job(job_id).status == "running"


def test_a_pooled_job_lifts_the_average_of_its_inputs(settings: Settings, toy_adapter: Path,
                                                      toy_pairs_dir: Path, tmp_path: Path) -> None:
    """Two organizations' adapters in one job: the delta is the GT's output for their mean, and it carries the
    collaboration, so its members can read it."""
    from safetensors.torch import load_file, save_file

    from models.lora.update import read_adapter, subtract
    from models.pairs import PairStore
    from models.upgrade import generate_update

    pair = PairStore(toy_pairs_dir).get("toy")
    first = toy_adapter / "adapter_model.safetensors"
    second = tmp_path / "other.safetensors"  # another organization's adapter: same init, another update
    init = pair.init("tiny")
    save_file({k: (2 * v - init[k]).contiguous() for k, v in load_file(str(first)).items()}, str(second))
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    inputs = [{"id": f"ckpt_{i}", "sha256": store.put_file(p)[0]} for i, p in enumerate((first, second))]
    with session_scope() as s:
        org, _ = queries.create_key(s, "acme")
        collab = queries.create_collaboration(s, org.id, "pool", "toy")
        job_id = jobs.create_job(s, org.id, "toy", None, "all", inputs, collab.id).id
    run_job(job_id, "w1")
    assert job(job_id).status == "succeeded", job(job_id).error_message
    with session_scope() as s:
        delta = jobs.delta_for_job(s, job_id)
    assert delta.collaboration_id == collab.id and delta.sources == inputs
    stored = load_file(str(store.path(delta.files["update.safetensors"]["sha256"])))
    own = subtract(read_adapter(first), init)
    # The second update is twice the first, so their element-wise mean is 1.5 times the first: the pooled
    # delta is the GT's output for that one update (computed here, not by the averaging code).
    pooled, _ = generate_update(pair, "all", [{k: 1.5 * v for k, v in own.items()}])
    single, _ = generate_update(pair, "all", [own])
    assert all(torch.allclose(stored[k], pooled[k], atol=1e-6) for k in pooled)
    assert not all(torch.allclose(stored[k], single[k], atol=1e-6) for k in single)


def test_what_a_job_hands_out_names_no_path_of_the_server(settings: Settings, toy_adapter: Path,
                                                          toy_pairs_dir: Path) -> None:
    """The generated adapter_config.json said `base_model_name_or_path`: "<the server's pairs folder>/toy/llm"."""
    import json

    job_id = new_job(settings, toy_adapter)
    run_job(job_id, "w1")
    with session_scope() as s:
        delta = jobs.delta_for_job(s, job_id)
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    config = json.loads(store.path(delta.files["adapter_config.json"]["sha256"]).read_bytes())
    assert config["base_model_name_or_path"] == "toy-llm"
    for info in delta.files.values():
        content = store.path(info["sha256"]).read_bytes()
        for path in (toy_pairs_dir, settings.data_dir):
            assert str(path).encode() not in content


def test_an_internal_failure_names_no_path_of_the_server(settings: Settings, toy_adapter: Path,
                                                          toy_pairs_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An error that is not the ML core's own (here: a pair file gone) kept its text, paths and all."""
    broken = tmp_path / "pairs"
    shutil.copytree(toy_pairs_dir / "toy", broken / "toy", ignore=shutil.ignore_patterns("shadow"))
    (broken / "toy" / "llm_lora_init.safetensors").unlink()
    use_settings(monkeypatch, pairs_dir=str(broken))
    job_id = new_job(settings, toy_adapter)
    run_job(job_id, "w1")
    failed = job(job_id)
    assert (failed.status, failed.error_code) == ("failed", "internal_error")
    assert str(tmp_path) not in failed.error_message and "worker's log" in failed.error_message


def _crashed_attempt(settings: Settings, job_id: str, worker: str) -> Path:
    """What a worker killed mid-job leaves: the job claimed, its scratch folder with half its files."""
    with session_scope() as s:
        assert jobs.claim(s, job_id, worker, settings.job_lease_s) is not None
    folder = BlobStore(settings.blobs_dir, settings.tmp_dir).work_dir(job_id)
    (folder / "adapter_model.safetensors").write_bytes(b"half of it")
    return folder


def test_a_crashed_attempts_folder_goes_on_retry(settings: Settings, toy_adapter: Path) -> None:
    job_id = new_job(settings, toy_adapter)
    left = _crashed_attempt(settings, job_id, "w1")
    with session_scope() as s:  # its lease runs out; the sweeper queues it again
        s.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=utcnow() - timedelta(seconds=settings.job_lease_s + 1)))
        assert jobs.requeue(s, job_id, settings.job_lease_s)
    run_job(job_id, "w2")
    assert job(job_id).status == "succeeded" and not left.exists()
    assert list(settings.tmp_dir.iterdir()) == []


def test_the_sweeper_removes_folders_of_attempts_that_died(settings: Settings, toy_adapter: Path) -> None:
    queued, finished, running = (new_job(settings, toy_adapter) for _ in range(3))
    folders = {job_id: _crashed_attempt(settings, job_id, "w1") for job_id in (queued, finished, running)}
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == queued).values(status="queued", worker=None))
        jobs.fail(s, finished, "w1", "internal_error", "died")
    fresh = BlobStore(settings.blobs_dir, settings.tmp_dir).work_dir(queued)  # a claim just starting
    long_ago = time.time() - settings.job_lease_s - 1
    for folder in folders.values():
        os.utime(folder, (long_ago, long_ago))
    sweep()
    assert not folders[queued].exists() and not folders[finished].exists()
    assert folders[running].exists() and fresh.exists()  # in use, or too new to judge


def test_the_sweeper_puts_back_a_blob_whose_delete_died(settings: Settings, toy_adapter: Path) -> None:
    """A delete moves the blob aside, then commits; a process that dies in between leaves the row, whose
    blob the sweeper puts back (and a blob whose row went is removed for good)."""
    from app.db.tables import Checkpoint

    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    kept, _ = store.put_file(toy_adapter / "adapter_model.safetensors")
    gone, _ = store.put_file(toy_adapter / "adapter_config.json")
    with session_scope() as s:
        org, _ = queries.create_key(s, "acme")
        s.add(Checkpoint(org_id=org.id, pair="toy", sha256=kept, bytes=1, filename="a", adapter_config=None))
    long_ago = time.time() - settings.job_lease_s - 1
    for sha in (kept, gone):
        aside = settings.tmp_dir / f"removing-{sha}-0000dead"
        os.replace(store.path(sha), aside)
        os.utime(aside, (long_ago, long_ago))
    sweep()
    assert store.exists(kept) and not store.exists(gone)
    assert list(settings.tmp_dir.iterdir()) == []
