"""Models the caller can chat with: each pair's base LLM, and every delta the caller's organization may
use (its own, and the pooled deltas of collaborations it has joined)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.cache import TtlCache
from app.api.deps import CurrentOrg, PairsDep, SessionDep, StoreDep
from app.config import Settings
from app.db import queries
from app.db.session import new_session
from app.db.tables import Organization
from app.errors import Code, not_found
from app.pairs import PairCatalog
from app.schemas.chat import ModelPublic, ModelsPublic
from app.schemas.common import ERROR_RESPONSES
from app.schemas.deltas import DeltaFileName
from app.storage import BlobStore

if TYPE_CHECKING:
    from models.serving.adapters import AdapterRef

router = APIRouter(prefix="/v1/models", tags=["chat"], responses=ERROR_RESPONSES)

BASE_SUFFIX = "-llm"  # a pair's base LLM is the model "<pair>-llm" (models.pairs.Pair.llm_name)
MAX_DELTAS = 10_000
OWNER = "gradlift"


def base_model_id(pair_id: str) -> str:
    return pair_id + BASE_SUFFIX


@dataclass(frozen=True)
class ChatModel:
    """What a model id names: a pair's LLM, with one of the caller's deltas on it or none."""

    id: str
    pair: str
    adapter: AdapterRef | None


def resolve_model(model_id: str, session: Session, org: Organization, store: BlobStore,
                  pairs: PairCatalog) -> ChatModel:
    """The model behind an id, for this organization; 404 for an unknown model or another's delta."""
    from models.serving.adapters import AdapterRef

    missing = not_found("model", model_id, param="model", code=Code.not_found)
    delta = queries.get_delta(session, org.id, model_id)
    if delta is not None:
        if delta.pair not in pairs.ids():
            raise missing
        path = store.path(delta.files[DeltaFileName.adapter_model.value]["sha256"])
        return ChatModel(delta.id, delta.pair, AdapterRef(delta.id, path))
    pair_id = model_id.removesuffix(BASE_SUFFIX)
    if model_id.endswith(BASE_SUFFIX) and pair_id in pairs.ids():
        return ChatModel(model_id, pair_id, None)
    raise missing


@lru_cache(maxsize=1)
def _resolved(ttl_s: float) -> TtlCache[tuple[str, str, str], ChatModel]:
    return TtlCache(ttl_s, size=10_000)


def _resolve_in_new_session(model_id: str, settings: Settings, org: Organization, store: BlobStore,
                            pairs: PairCatalog) -> ChatModel:
    with new_session(settings.database_url) as session:
        return resolve_model(model_id, session, org, store, pairs)


async def chat_model(model_id: str, settings: Settings, org: Organization, store: BlobStore,
                     pairs: PairCatalog) -> ChatModel:
    """`resolve_model`, remembered for `auth_cache_s` seconds: a delta's content never changes, so only
    its removal could be seen that late. Unknown ids are looked up every time."""
    cache, key = _resolved(settings.auth_cache_s), (settings.database_url, org.id, model_id)
    model = await cache.get_or_load(key, lambda: run_in_threadpool(_resolve_in_new_session, model_id, settings,
                                                                   org, store, pairs))
    assert model is not None  # resolve_model answers a model or raises
    return model


def _list(session: Session, org: Organization, pairs: PairCatalog) -> list[ModelPublic]:
    data = []
    for pair_id in pairs.ids():
        created = int((pairs.root / pair_id / "pair.json").stat().st_mtime)
        base = base_model_id(pair_id)
        data.append(ModelPublic(id=base, created=created, owned_by=OWNER, root=base, parent=None, pair=pair_id))
    available = set(pairs.ids())
    for delta in queries.list_deltas(session, org.id, MAX_DELTAS):
        if delta.pair in available:
            base = base_model_id(delta.pair)
            data.append(ModelPublic(id=delta.id, created=int(delta.created_at.timestamp()), owned_by=delta.org_id,
                                    root=base, parent=base, pair=delta.pair))
    return data


@router.get("")
async def list_models(session: SessionDep, org: CurrentOrg, pairs: PairsDep) -> ModelsPublic:
    """The pairs' base LLMs and the organization's deltas, each with its lineage (`root`, `parent`)."""
    data = await run_in_threadpool(_list, session, org, pairs)
    return ModelsPublic(data=data, count=len(data))


@router.get("/{model_id}")
async def get_model(model_id: str, session: SessionDep, org: CurrentOrg, pairs: PairsDep,
                    store: StoreDep) -> ModelPublic:
    """One model."""
    model = await run_in_threadpool(resolve_model, model_id, session, org, store, pairs)
    found = [m for m in await run_in_threadpool(_list, session, org, pairs) if m.id == model.id]
    return found[0]
