"""Model pairs, and what every organization fine-tunes from: the TinyLM's files and its LoRA init."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.api.deps import CurrentOrg, PairsDep
from app.errors import ApiError, Code
from app.pairs import PairCatalog, file_sha256, task_gt
from app.schemas.common import ERROR_RESPONSES
from app.schemas.pairs import LoraPublic, PairFile, PairFiles, PairPublic, PairsPublic, PairTask

if TYPE_CHECKING:
    from models.pairs import Pair

router = APIRouter(prefix="/v1/pairs", tags=["pairs"], responses=ERROR_RESPONSES)


def to_public(pair: Pair) -> PairPublic:
    from models.pairs.tasks import task_ids, task_info

    spec = pair.spec.to_dict()
    lora = spec["lora"]
    details = [PairTask(id=task, metric=info.metric, source=info.source, gt=task_gt(pair, task))
               for task in task_ids(pair) for info in [task_info(pair, task)]]
    return PairPublic(id=spec["id"], tiny=spec["tiny"], llm=spec["llm"], tasks=pair.gt_ids(),
                      lora=LoraPublic(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                                      targets=list(lora["targets"])), task_details=details)


@router.get("")
async def list_pairs(_org: CurrentOrg, pairs: PairsDep) -> PairsPublic:
    """The pairs this service can upgrade to, with the tasks that have a trained GT."""
    data = await run_in_threadpool(lambda: [to_public(pairs.get(i)) for i in pairs.ids()])
    return PairsPublic(data=data, count=len(data))


@router.get("/{pair_id}")
async def get_pair(pair_id: str, _org: CurrentOrg, pairs: PairsDep) -> PairPublic:
    """One pair."""
    return await run_in_threadpool(lambda: to_public(pairs.get(pair_id, param=None)))


def _binary(text: str) -> dict:
    return {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                  "description": text}}


def _file(request: Request, path: Path, sha256: str, filename: str) -> Response:
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(path, filename=filename, headers={"ETag": etag}, media_type="application/octet-stream")


@router.get("/{pair_id}/tiny-lora-init", response_class=FileResponse,
            responses=_binary("The TinyLM's LoRA A0/B0 (safetensors, PEFT names)."))
async def get_tiny_lora_init(pair_id: str, request: Request, _org: CurrentOrg, pairs: PairsDep) -> Response:
    """The TinyLM's LoRA init tensors: fine-tune from these; the file itself is a valid (zero) upload."""
    pair = await run_in_threadpool(pairs.get, pair_id, param=None)
    sha256 = await run_in_threadpool(file_sha256, pair.tiny_init_path)
    return _file(request, pair.tiny_init_path, sha256, f"{pair.id}-tiny-lora-init.safetensors")


@router.get("/{pair_id}/tiny/files")
async def list_tiny_files(pair_id: str, _org: CurrentOrg, pairs: PairsDep) -> PairFiles:
    """The TinyLM's folder (weights, config, tokenizer): download these to fine-tune it locally."""
    files = await run_in_threadpool(_tiny_files, pairs, pair_id)
    return PairFiles(data=files, count=len(files))


@router.get("/{pair_id}/tiny/files/{name}", response_class=FileResponse,
            responses=_binary("One file of the TinyLM's folder; `ETag` is its sha256; `Range` gives 206."))
async def get_tiny_file(pair_id: str, name: str, request: Request, _org: CurrentOrg, pairs: PairsDep) -> Response:
    """One file of the TinyLM's folder."""
    files = {f.name: f for f in await run_in_threadpool(_tiny_files, pairs, pair_id)}
    if name not in files:
        raise ApiError(Code.not_found, f"The TinyLM of pair {pair_id!r} has no file {name!r}.", param="name")
    path = pairs.get(pair_id, param=None).tiny_dir / name
    return _file(request, path, files[name].sha256, name)


_NOT_SERVED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # pickles: clients are told never to load them


def _tiny_files(pairs: PairCatalog, pair_id: str) -> list[PairFile]:
    folder = pairs.get(pair_id, param=None).tiny_dir
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_NOT_SERVED))
    return [PairFile(name=p.name, bytes=p.stat().st_size, sha256=file_sha256(p)) for p in paths]
