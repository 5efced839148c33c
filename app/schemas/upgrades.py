from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import NO_NUL, UnixTime

Id = Annotated[str, Field(pattern=NO_NUL)]
# A prompt has something to say (not only spaces), no NUL, and at most app.prompts.MAX_PROMPT_CHARS characters.
Prompt = Annotated[str, Field(min_length=1, max_length=8000, pattern=r"^[^\x00]*\S[^\x00]*$")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Mode = Literal["gt", "distill", "auto"]


class UpgradeCreate(BaseModel):
    """Either the caller's own checkpoints, or a collaboration whose contributions are pooled."""

    # What the validator below enforces, in the document too: exactly one of the two, and neither as null.
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["checkpoint_ids"]},
                                                           {"required": ["collaboration_id"]}]})

    pair: str = Field(min_length=1, max_length=100, pattern=NO_NUL, description="The model pair, e.g. `toy`.")
    task: str | None = Field(default=None, max_length=100, pattern=NO_NUL,
                             description="The task whose Gradient Transformer to use; omit it when the pair "
                             "has one GT for all its tasks.")
    checkpoint_ids: Annotated[list[Id], Field(min_length=1, max_length=64)] | SkipJsonSchema[None] = Field(
        default=None, description="Uploaded TinyLM adapters; several are averaged first.")
    collaboration_id: Annotated[str, Field(min_length=1, max_length=32, pattern=NO_NUL)] | SkipJsonSchema[None] = Field(
        default=None, description="A collaboration the caller has joined and contributed to: its contributions "
        "are averaged, and the members whose contributions went in can use the result.")
    mode: Mode = Field(default="auto", description="`gt`: the Gradient Transformer's update. `distill`: the "
                       "LLM fine-tuned on the organization's TinyLM's answers to prompts (slower; works for "
                       "tasks no GT knows). `auto`: the GT's update when the upload looks like the GT's shadow "
                       "runs and its quality verdict is ok, distillation otherwise.")
    prompts: Annotated[list[Prompt], Field(min_length=1, max_length=5000)] | SkipJsonSchema[None] = Field(
        default=None,
                                      description="Unlabelled prompts in the organization's own format, for "
                                      "probes and distillation (else those attached to the checkpoint, else "
                                      "the pair's public prompts). The provider sees them.")

    @model_validator(mode="after")
    def _one_source(self) -> UpgradeCreate:
        given = {"checkpoint_ids", "collaboration_id"} & self.model_fields_set
        if len(given) != 1 or getattr(self, given.pop()) is None:
            raise ValueError("give either checkpoint_ids or collaboration_id")
        return self


class UpgradeEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: UnixTime
    stage: str
    progress: float
    message: str


class UpgradeEvents(BaseModel):
    data: list[UpgradeEvent]
    count: int


class UpgradeError(BaseModel):
    code: str
    message: str


class UpgradeInput(BaseModel):
    id: str
    sha256: str


class UpgradePublic(BaseModel):
    id: str
    object: Literal["upgrade"] = "upgrade"
    pair: str
    task: str | None
    gt_id: str | None = Field(description="The GT the upgrade may use; null when none covers it.")
    mode: Mode
    prompts_count: int | None = Field(default=None, description="The organization's prompts it probes with.")
    quality: dict[str, Any] | None = Field(default=None, description="The delivered delta's quality report "
                                           "(mode used, verdict, agreement, similarity); null until it exists.")
    checkpoint_ids: list[str]
    collaboration_id: str | None
    status: Status
    progress: float
    stage: str
    error: UpgradeError | None
    delta_id: str | None
    attempts: int
    created_at: UnixTime
    started_at: UnixTime | None
    finished_at: UnixTime | None
    events: list[UpgradeEvent]


class UpgradesPublic(BaseModel):
    data: list[UpgradePublic]
    count: int
