from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.schemas.common import UnixTime


class CheckpointPublic(BaseModel):
    """An uploaded TinyLM LoRA adapter."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["checkpoint"] = "checkpoint"
    pair: str
    sha256: str
    bytes: int
    filename: str
    adapter_config: dict[str, Any] | None
    created_at: UnixTime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class CheckpointDeleted(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    deleted: bool = True
