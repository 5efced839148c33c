from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UnixTime


class OrganizationPublic(BaseModel):
    """The caller's organization; others invite it to collaborations by its id."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["organization"] = "organization"
    name: str
    created_at: UnixTime
    admin: bool = Field(default=False, description="Whether the key of the request is an admin key (it reaches "
                        "/v1/admin).")
