"""The provider's tasks: registered on a pair from JSONL data files (the built-in procedural ones listed too)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from app.api.deps import AdminOrg, PairsDep, SettingsDep, StoreDep
from app.errors import ApiError, Code
from app.pairs import PairCatalog
from app.schemas.admin import TaskPublic, TasksPublic
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.uploads import StreamedForm, read_form

router = APIRouter(prefix="/v1/admin/tasks", tags=["admin"],
                   responses={**ERROR_RESPONSES, 403: {"model": ErrorResponse, "description": "Not an admin key"}})

_LINES = 'JSONL, one {"prompt", "answer"} or {"messages": [...]} per line (what `gradlift finetune` reads).'
_TASK_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["pair", "id", "public"], "properties": {
        "pair": {"type": "string", "description": "The pair the task is for, e.g. `toy`."},
        "id": {"type": "string", "description": "The task's id: lower-case letters, digits, '.', '-', '_'."},
        "metric": {"type": "string", "enum": ["exact", "rouge1"], "default": "exact",
                   "description": "How GTs are scored on the test set: exact match, or ROUGE-1 F1 for free text."},
        "public": {"type": "string", "format": "binary", "description": f"The shadow pool. {_LINES}"},
        "test": {"type": "string", "format": "binary", "description": f"Scores GTs (optional). {_LINES}"},
    }}}}}}


def to_public(info: object) -> TaskPublic:
    return TaskPublic.model_validate(info.to_dict())  # type: ignore[attr-defined]


@router.post("", status_code=201, openapi_extra=_TASK_BODY,
             responses={409: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
async def create_task(request: Request, _admin: AdminOrg, settings: SettingsDep, store: StoreDep,
                      pairs: PairsDep) -> TaskPublic:
    """Register a task on a pair from JSONL files; every malformed line is reported, and nothing is stored."""
    limit = settings.max_upload_bytes
    form = await read_form(request, store, file_limits={"public": limit, "test": limit},
                           field_names={"pair", "id", "metric"})
    try:
        return await run_in_threadpool(_register, form, pairs)
    finally:
        form.abort()


def _register(form: StreamedForm, pairs: PairCatalog) -> TaskPublic:
    from models.errors import ConfigError, DataFileError
    from models.pairs.tasks import TaskExistsError, register_task

    for name in ("pair", "id"):
        if not form.fields.get(name):
            raise ApiError(Code.invalid_request, f"Missing the form field `{name}`.", param=name)
    if "public" not in form.files:
        raise ApiError(Code.invalid_request, "Missing the file `public` (the task's shadow pool, JSONL).",
                       param="public")
    pair = pairs.get(form.fields["pair"])
    test = form.files.get("test")
    try:
        info = register_task(pair, form.fields["id"], form.files["public"].blob.path,
                             test.blob.path if test else None, form.fields.get("metric") or "exact")
    except TaskExistsError as exc:
        raise ApiError(Code.conflict, f"{exc}.", param="id") from None
    except DataFileError as exc:
        raise ApiError(Code.invalid_data_file, str(exc), param=str(exc).split(" file", 1)[0]) from None
    except ConfigError as exc:
        param = "metric" if "metric" in str(exc) else "id"
        raise ApiError(Code.invalid_request, f"{exc}.", param=param) from None
    return to_public(info)


@router.get("")
async def list_tasks(_admin: AdminOrg, pairs: PairsDep,
                     pair: str | None = Query(default=None, description="Only this pair's tasks.")) -> TasksPublic:
    """Every task of every pair (or of one): procedural and registered."""
    data = await run_in_threadpool(_tasks, pairs, pair)
    return TasksPublic(data=data, count=len(data))


def _tasks(pairs: PairCatalog, pair_id: str | None) -> list[TaskPublic]:
    from models.pairs.tasks import task_ids, task_info

    chosen = [pairs.get(pair_id, param="pair")] if pair_id else [pairs.get(i) for i in pairs.ids()]
    return [to_public(task_info(pair, task)) for pair in chosen for task in task_ids(pair)]
