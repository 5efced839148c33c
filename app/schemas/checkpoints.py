from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    privacy: dict[str, Any] | None = Field(
        default=None, description="DP-SGD / output-noise settings recorded in the file's metadata; upgrades "
                                  "use the GT trained on shadow runs of the nearest privacy")
    prompts_count: int | None = Field(
        default=None, description="How many unlabelled prompts were attached (`prompts`): upgrades of this "
                                  "checkpoint probe and distill with them. The provider sees these prompts.")
    created_at: UnixTime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class CheckpointDeleted(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    deleted: bool = True
