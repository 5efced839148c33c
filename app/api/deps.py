"""Dependencies as `Annotated` aliases: settings, session, the caller's organization, stores, and
loaders that fetch a row by id for the caller's organization or answer 404.

The ones every request needs are coroutines and touch no database while their answer is cached, so a
chat request reaches its handler without a thread hop (FastAPI runs plain functions in its threadpool)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.cache import TtlCache
from app.config import Settings, get_settings
from app.db import jobs, queries
from app.db.session import new_session
from app.db.tables import Checkpoint, Collaboration, Delta, Job, MemberStatus, Organization
from app.errors import ApiError, Code, not_found
from app.pairs import PairCatalog
from app.storage import BlobStore

if TYPE_CHECKING:
    from models.serving.engine import ChatEngines


async def current_settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with new_session(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `gradlift keys create --org NAME`.")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def current_org(request: Request, _credentials: Credentials) -> Organization:
    """The organization of the request's API key, found by `app.api.guard` before the body was read
    (`app.api.auth`: cached for `auth_cache_s`, throttled per address). `Credentials` puts the bearer
    scheme into the OpenAPI document."""
    return request.state.org


CurrentOrg = Annotated[Organization, Depends(current_org)]


@lru_cache(maxsize=1)
def _admins(ttl_s: float) -> TtlCache[tuple[str, str], Organization]:
    return TtlCache(ttl_s, size=1000)


def _admin_for_key(database_url: str, key: str) -> Organization | None:
    with new_session(database_url) as session:
        return queries.admin_org_for_key(session, key)


async def is_admin_key(credentials: Credentials, settings: SettingsDep) -> bool:
    """Whether the request's key is an admin key (cached like `current_admin`)."""
    if credentials is None:
        return False
    try:
        await current_admin(credentials, settings, None)  # type: ignore[arg-type]  # its org is not read
    except ApiError:
        return False
    return True


async def current_admin(credentials: Credentials, settings: SettingsDep, _org: CurrentOrg) -> Organization:
    """The provider's organization, for the /v1/admin routes: an organization's key answers 403."""
    assert credentials is not None  # current_org answered 401 otherwise
    cache = _admins(settings.auth_cache_s)
    cache_key = (settings.database_url, queries.hash_key(credentials.credentials))
    org = cache.get(cache_key)
    if org is None:
        org = await run_in_threadpool(_admin_for_key, settings.database_url, credentials.credentials)
        if org is None:
            raise ApiError(Code.permission_denied, "This route is the provider's: it needs an admin key "
                           "(`gradlift keys create --org NAME --admin`).")
        cache.put(cache_key, org)
    return org


AdminOrg = Annotated[Organization, Depends(current_admin)]


@lru_cache(maxsize=4)
def _store(blobs_dir: Path, tmp_dir: Path) -> BlobStore:
    return BlobStore(blobs_dir, tmp_dir)


async def get_store(settings: SettingsDep) -> BlobStore:
    return _store(settings.blobs_dir, settings.tmp_dir)


StoreDep = Annotated[BlobStore, Depends(get_store)]


async def get_pairs(settings: SettingsDep) -> PairCatalog:
    assert settings.pairs_dir is not None  # filled in by Settings
    return PairCatalog(settings.pairs_dir)


PairsDep = Annotated[PairCatalog, Depends(get_pairs)]


_ENGINES_LOCK = threading.Lock()  # concurrent first chat requests make one ChatEngines, not several
_ENGINES: dict[tuple[object, ...], ChatEngines] = {}  # one per process: the settings it was made with


def _chat_engines_once(*args: object) -> ChatEngines:
    with _ENGINES_LOCK:
        if args not in _ENGINES:
            from models.serving.engine import ChatEngines  # torch loads on the first chat request, not at start

            _ENGINES.clear()  # settings change only in tests; the engines of old ones go
            _ENGINES[args] = ChatEngines(*args)  # type: ignore[arg-type]
        return _ENGINES[args]


async def get_chat_engines(settings: SettingsDep) -> ChatEngines:
    assert settings.pairs_dir is not None  # filled in by Settings
    args = (settings.pairs_dir, settings.chat_max_adapters, settings.chat_torch_threads, settings.device,
            settings.chat_max_batch)
    if (engines := _ENGINES.get(args)) is not None:
        return engines
    from models.device import DeviceError

    try:
        return await run_in_threadpool(_chat_engines_once, *args)  # importing torch takes seconds: off the loop
    except DeviceError as exc:  # GRADLIFT_DEVICE names a GPU this machine lacks
        raise ApiError(Code.not_ready, f"Chat is unavailable: {exc}.") from None


ChatDep = Annotated["ChatEngines", Depends(get_chat_engines)]

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=255, description="Retries with the same key get the first response.")]


def load_checkpoint(checkpoint_id: str, session: SessionDep,
                    org: CurrentOrg) -> Checkpoint:
    row = queries.get_checkpoint(session, org.id, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    return row


def load_job(upgrade_id: str, session: SessionDep, org: CurrentOrg) -> Job:
    row = jobs.get_job(session, org.id, upgrade_id)
    if row is None:
        raise not_found("upgrade", upgrade_id)
    return row


def load_delta(delta_id: str, session: SessionDep, org: CurrentOrg) -> Delta:
    row = queries.get_delta(session, org.id, delta_id)
    if row is None:
        raise not_found("delta", delta_id)
    return row


def load_collaboration(collaboration_id: str, session: SessionDep, org: CurrentOrg) -> Collaboration:
    """A collaboration the caller belongs to or is invited to."""
    row = queries.get_collaboration(session, org.id, collaboration_id)
    if row is None:
        raise not_found("collaboration", collaboration_id)
    return row


def joined_collaboration(session: Session, org: Organization, collaboration_id: str,
                         param: str | None = None) -> Collaboration:
    """A collaboration the caller has joined: 404 to outsiders, 403 to an organization only invited."""
    member = queries.membership(session, org.id, collaboration_id)
    if member is None:
        raise not_found("collaboration", collaboration_id, param=param)
    if member.status != MemberStatus.joined:
        raise ApiError(Code.permission_denied, f"Join collaboration {collaboration_id!r} first "
                       f"(POST /v1/collaborations/{collaboration_id}/join).", param=param)
    return session.get(Collaboration, collaboration_id)


CheckpointDep = Annotated[Checkpoint, Depends(load_checkpoint)]
JobDep = Annotated[Job, Depends(load_job)]
DeltaDep = Annotated[Delta, Depends(load_delta)]
CollaborationDep = Annotated[Collaboration, Depends(load_collaboration)]
