from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LoraPublic(BaseModel):
    r: int
    alpha: float
    dropout: float
    targets: list[str]


class TaskGT(BaseModel):
    """The GT a plain upgrade on a task uses now, its version and its card's summary (if the service trained it)."""

    id: str
    version: str
    card_summary: dict[str, Any] | None


class PairTask(BaseModel):
    id: str
    metric: Literal["exact", "rouge1"]
    source: Literal["procedural", "files"]
    gt: TaskGT | None = Field(description="None: no GT serves this task yet.")


class PairPublic(BaseModel):
    """A TinyLM -> LLM pair: its GTs in service, and every task it knows with the GT serving it."""

    id: str
    object: Literal["pair"] = "pair"
    tiny: str
    llm: str
    lora: LoraPublic
    tasks: list[str] = Field(description="The GTs in service: a task's own, `all` for every procedural task, "
                             "privacy variants `<task>@...`.")
    task_details: list[PairTask] = Field(description="Every task of the pair, procedural and registered.")


class PairsPublic(BaseModel):
    data: list[PairPublic]
    count: int


class PairFile(BaseModel):
    """A file of a pair's TinyLM folder (weights, config, tokenizer), as an organization downloads it."""

    name: str
    bytes: int
    sha256: str


class PairFiles(BaseModel):
    data: list[PairFile]
    count: int
