from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.common import UnixTime


class DeltaFileName(StrEnum):
    adapter_config = "adapter_config.json"
    adapter_model = "adapter_model.safetensors"
    update = "update.safetensors"


class DeltaFile(BaseModel):
    name: str
    bytes: int
    sha256: str


class DeltaSource(BaseModel):
    id: str
    sha256: str


class DeltaPublic(BaseModel):
    """A generated LLM adapter: a PEFT folder, immutable under its id."""

    id: str
    object: Literal["delta"] = "delta"
    pair: str
    task: str | None
    gt_id: str | None = Field(description="The GT that made it, or whose update a distillation started from "
                                 "(`quality.distill.start` is `gt`); null for a delta distilled from the "
                                 "pair's init.")
    gt_version: str | None
    mode: str = Field(description="What made the update: `gt` or `distill`.")
    quality: dict[str, Any] | None = Field(description="How much to trust it: `verdict` (ok, low_confidence, "
                                           "no_gain) and its `reason`, `agreement` with the organization's TinyLM "
                                           "on probe prompts beside the base LLM's, `similarity` of the upload to "
                                           "the GT's shadow runs. Null for deltas made before reports existed.")
    upgrade_id: str
    collaboration_id: str | None = Field(description="Set for a pooled upgrade: every member may use it.")
    sources: list[DeltaSource]
    files: list[DeltaFile]
    bytes: int
    verification: dict[str, Any]
    created_at: UnixTime


class DeltasPublic(BaseModel):
    data: list[DeltaPublic]
    count: int
