from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class LoraPublic(BaseModel):
    r: int
    alpha: float
    dropout: float
    targets: list[str]


class PairPublic(BaseModel):
    """A TinyLM -> LLM pair and the tasks it has a trained Gradient Transformer for."""

    id: str
    object: Literal["pair"] = "pair"
    tiny: str
    llm: str
    lora: LoraPublic
    tasks: list[str]


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
