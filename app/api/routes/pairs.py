"""Model pairs, and the TinyLM LoRA init every organization fine-tunes from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.api.deps import CurrentOrg, PairsDep
from app.schemas.common import ERROR_RESPONSES
from app.schemas.pairs import LoraPublic, PairPublic, PairsPublic
from app.storage import sha256_file

if TYPE_CHECKING:
    from models.pairs import Pair

router = APIRouter(prefix="/v1/pairs", tags=["pairs"], responses=ERROR_RESPONSES)


def to_public(pair: Pair) -> PairPublic:
    spec = pair.spec.to_dict()
    lora = spec["lora"]
    return PairPublic(id=spec["id"], tiny=spec["tiny"], llm=spec["llm"], tasks=pair.gt_ids(),
                      lora=LoraPublic(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                                      targets=list(lora["targets"])))


@router.get("")
async def list_pairs(_org: CurrentOrg, pairs: PairsDep) -> PairsPublic:
    """The pairs this service can upgrade to, with the tasks that have a trained GT."""
    data = await run_in_threadpool(lambda: [to_public(pairs.get(i)) for i in pairs.ids()])
    return PairsPublic(data=data, count=len(data))


@router.get("/{pair_id}")
async def get_pair(pair_id: str, _org: CurrentOrg, pairs: PairsDep) -> PairPublic:
    """One pair."""
    return await run_in_threadpool(lambda: to_public(pairs.get(pair_id, param=None)))


@router.get("/{pair_id}/tiny-lora-init", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                 "format": "binary"}}},
                             "description": "The TinyLM's LoRA A0/B0 (safetensors, PEFT names)."}})
async def get_tiny_lora_init(pair_id: str, request: Request, _org: CurrentOrg, pairs: PairsDep) -> Response:
    """The TinyLM's LoRA init tensors: fine-tune from these; the file itself is a valid (zero) upload."""
    pair = await run_in_threadpool(pairs.get, pair_id, param=None)
    path = pair.tiny_init_path
    etag = f'"{await run_in_threadpool(sha256_file, path)}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(path, filename=f"{pair.id}-tiny-lora-init.safetensors", headers={"ETag": etag},
                        media_type="application/octet-stream")
