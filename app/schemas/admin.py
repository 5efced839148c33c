"""The provider's resources: tasks from data files, shadow builds, GT trainings, GT versions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UnixTime
from app.schemas.upgrades import Status, UpgradeError

PairField = Field(min_length=1, max_length=100, description="The model pair, e.g. `toy`.")


class TaskPublic(BaseModel):
    """A task of a pair: procedural (built in) or registered from JSONL files."""

    id: str
    object: Literal["task"] = "task"
    pair: str
    metric: Literal["exact", "rouge1"]
    n_public: int = Field(description="Examples in the provider's shadow pool.")
    n_test: int = Field(description="Examples that score GTs (0: no test set).")
    source: Literal["procedural", "files"]


class TasksPublic(BaseModel):
    data: list[TaskPublic]
    count: int


class AdminEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: UnixTime
    stage: str
    progress: float
    message: str


class AdminEvents(BaseModel):
    data: list[AdminEvent]
    count: int


class ShadowBuildCreate(BaseModel):
    """Shadow runs 0..runs-1 of a task's plan: the pair's recipe, with any of the settings below changed."""

    model_config = ConfigDict(extra="forbid")

    pair: str = PairField
    task: str = Field(min_length=1, max_length=100)
    runs: int = Field(ge=1, le=10_000, description="Shadow runs wanted; those already on disk are reused.")
    subset_size: int | None = Field(default=None, ge=1, description="Public examples per run.")
    keep_last: int | None = Field(default=None, ge=1, le=1000, description="Snapshots kept per run.")
    steps: int | None = Field(default=None, ge=1, le=100_000, description="Fine-tune steps (both models).")
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    chunk_size: int | None = Field(default=None, ge=1, le=1024,
                                   description="Runs per worker job, trained in one loop (default: the recipe's).")


class ShadowBuildPublic(BaseModel):
    id: str
    object: Literal["shadow_build"] = "shadow_build"
    pair: str
    task: str
    status: Status
    done: int = Field(description="Runs on disk, reused ones included.")
    total: int
    reused: int
    plan_key: str = Field(description="The plan's folder under the pair's shadow/<task>/.")
    plan: dict[str, Any]
    chunks: dict[str, int] = Field(description="Chunks by status.")
    error: UpgradeError | None
    created_at: UnixTime
    started_at: UnixTime | None
    finished_at: UnixTime | None
    events: list[AdminEvent]


class ShadowBuildsPublic(BaseModel):
    data: list[ShadowBuildPublic]
    count: int


class GTTrainingCreate(BaseModel):
    """Train a GT on the newest finished shadow build of each task."""

    model_config = ConfigDict(extra="forbid")

    pair: str = PairField
    tasks: list[str] = Field(min_length=1, max_length=64)
    gt_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.@-]*$",
                              description="The GT's name, what upgrades resolve (default: the task, or `all` "
                              "for several).")
    steps: int | None = Field(default=None, ge=40, le=100_000, description="GT training steps (the recipe's).")
    d_model: int | None = Field(default=None, ge=8, le=4096, description="The network's width (multiple of 4).")
    max_test: int | None = Field(default=None, ge=1, le=10_000, description="Test examples the card scores per task.")


class GTTrainingPublic(BaseModel):
    id: str
    object: Literal["gt_training"] = "gt_training"
    pair: str
    tasks: list[str]
    gt_id: str
    status: Status
    progress: float
    stage: str
    version: str | None = Field(description="The trained version (serve it with POST /v1/admin/gts/{pair}/"
                                "{gt_id}/activate).")
    card: dict[str, Any] | None
    error: UpgradeError | None
    created_at: UnixTime
    started_at: UnixTime | None
    finished_at: UnixTime | None
    events: list[AdminEvent]


class GTTrainingsPublic(BaseModel):
    data: list[GTTrainingPublic]
    count: int


class GTVersionPublic(BaseModel):
    gt_id: str
    version: str = Field(description="The first 12 hex digits of the weights' sha256; deltas record it.")
    active: bool
    tasks: list[str]
    training_id: str | None
    card_summary: dict[str, Any] | None


class GTVersionsPublic(BaseModel):
    data: list[GTVersionPublic]
    count: int


class GTActivate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
