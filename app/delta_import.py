"""Store an LLM adapter folder made outside a worker (e.g. by `models.upgrade.run_upgrade` in process) as
a delta of an organization, exactly as a finished upgrade job stores one: used by `bench.serving` and the
chat tests, which need deltas to serve without running the upgrade queue."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from app.config import Settings
from app.db.session import session_scope
from app.db.tables import Delta, Job, JobStatus, Organization, utcnow
from app.storage import BlobStore

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "update.safetensors")


def import_delta(settings: Settings, org_name: str, folder: Path, pair: str, task: str | None = None,
                 gt_id: str = "all", gt_version: str = "imported") -> str:
    """The folder's files go to the blob store; a succeeded job and its delta go to the database.
    Returns the delta id; LookupError if the organization has no key yet."""
    store = BlobStore(settings.blobs_dir, settings.tmp_dir)
    files = {}
    for name in ADAPTER_FILES:
        sha256, size = store.put_file(Path(folder) / name)
        files[name] = {"sha256": sha256, "bytes": size}
    with session_scope(settings.database_url) as session:
        org = session.scalar(select(Organization).where(Organization.name == org_name))
        if org is None:
            raise LookupError(f"no organization {org_name!r}; make a key for it first")
        job = Job(org_id=org.id, pair=pair, task=task, gt_id=gt_id, inputs=[], status=JobStatus.succeeded.value,
                  progress=1.0, stage="succeeded", attempts=1, finished_at=utcnow())
        session.add(job)
        session.flush()
        delta = Delta(org_id=org.id, job_id=job.id, pair=pair, task=task, gt_id=gt_id, gt_version=gt_version,
                      sources=[], files=files, verification={})
        session.add(delta)
        session.flush()
        return delta.id
