from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import NO_NUL, UnixTime

MemberStatus = Literal["invited", "joined"]


class CollaborationCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description="A name the members will recognise.")
    pair: str = Field(min_length=1, max_length=100, pattern=NO_NUL,
                      description="The model pair every contribution is for.")


class InvitationCreate(BaseModel):
    organization_id: str = Field(min_length=1, max_length=32, pattern=NO_NUL,
                                 description="The invited organization's id (`org_…`, from GET /v1/organizations/me).")


class ContributionCreate(BaseModel):
    checkpoint_id: str = Field(min_length=1, max_length=32, pattern=NO_NUL,
                               description="One of the caller's own checkpoints.")


class MemberPublic(BaseModel):
    organization_id: str
    organization_name: str
    status: MemberStatus
    invited_at: UnixTime
    joined_at: UnixTime | None


class ContributionPublic(BaseModel):
    """A checkpoint its owner put into the collaboration: the owner's consent to pool it there."""

    id: str
    object: Literal["contribution"] = "contribution"
    collaboration_id: str
    organization_id: str
    checkpoint_id: str | None = Field(description="Null for an organization only invited: the members' "
                                                  "checkpoints are theirs to see once it joins.")
    created_at: UnixTime


class ContributionDeleted(BaseModel):
    id: str
    object: Literal["contribution"] = "contribution"
    deleted: bool = True


class Removed(BaseModel):
    """A member that left or was removed (`id`: the organization), or a deleted collaboration."""

    id: str
    object: Literal["collaboration", "collaboration.member"]
    deleted: bool = True


class CollaborationPublic(BaseModel):
    """Organizations pooling checkpoints into one upgrade; `owner` opened it and invites the others."""

    id: str
    object: Literal["collaboration"] = "collaboration"
    name: str
    pair: str
    owner: str
    status: MemberStatus = Field(description="The caller's own status: invited, or joined.")
    members: list[MemberPublic]
    contributions: list[ContributionPublic]
    created_at: UnixTime


class CollaborationsPublic(BaseModel):
    data: list[CollaborationPublic]
    count: int
