"""Collaborations: organizations pool checkpoints into one upgrade whose delta all members may use.

The organization that opens a collaboration invites others by id; an invited organization joins; each
joined member may contribute one of its own checkpoints, and only its owner can (that is the consent).
A member that contributed starts the pooled upgrade with `POST /v1/upgrades {"collaboration_id": ...}`;
the upgrade and its delta belong to the members whose contributions went in, while they stay members. Outsiders get 404
for everything here, as for any other organization's resource.

Consent can be taken back: a member leaves (or declines an invitation) with `DELETE .../members/{its id}`,
the opener removes a member the same way; either withdraws that member's contribution and ends its access
to the collaboration's pooled upgrades and deltas (those it started itself stay its own). The opener
deletes a collaboration that has no pooled delta and no upgrade in flight.
"""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api import idempotency
from app.api.deps import (
    CollaborationDep,
    CurrentOrg,
    IdempotencyKey,
    PairsDep,
    SessionDep,
    joined_collaboration,
)
from app.db import queries
from app.db.tables import Collaboration, Contribution, MemberStatus, Organization
from app.errors import ApiError, Code, not_found
from app.schemas.collaborations import (
    CollaborationCreate,
    CollaborationPublic,
    CollaborationsPublic,
    ContributionCreate,
    ContributionDeleted,
    ContributionPublic,
    InvitationCreate,
    MemberPublic,
    Removed,
)
from app.schemas.common import ERROR_RESPONSES, ErrorResponse

router = APIRouter(prefix="/v1/collaborations", tags=["collaborations"], responses=ERROR_RESPONSES)

SCOPE = "POST /v1/collaborations"
_CONFLICT = {409: {"model": ErrorResponse}}
_FORBIDDEN = {403: {"model": ErrorResponse, "description": "Allowed to another member only"}}


def contribution_public(row: Contribution, *, show_checkpoint: bool = True) -> ContributionPublic:
    return ContributionPublic(id=row.id, collaboration_id=row.collaboration_id, organization_id=row.org_id,
                              checkpoint_id=row.checkpoint_id if show_checkpoint else None, created_at=row.created_at)


def to_public(session: Session, collaboration: Collaboration, org: Organization) -> CollaborationPublic:
    """The collaboration as the caller sees it: an organization only invited sees who contributed, not
    which checkpoints."""
    members = [MemberPublic(organization_id=m.org_id, organization_name=name, status=m.status,
                            invited_at=m.invited_at, joined_at=m.joined_at)
               for m, name in queries.members(session, collaboration.id)]
    status = next(m.status for m in members if m.organization_id == org.id)
    joined = status == MemberStatus.joined
    return CollaborationPublic(id=collaboration.id, name=collaboration.name, pair=collaboration.pair,
                               owner=collaboration.org_id, status=status, members=members,
                               contributions=[contribution_public(c, show_checkpoint=joined)
                                              for c in queries.contributions(session, collaboration.id)],
                               created_at=collaboration.created_at)


@router.post("", responses=_CONFLICT)
def create_collaboration(body: CollaborationCreate, session: SessionDep, org: CurrentOrg, pairs: PairsDep,
                         key: IdempotencyKey = None) -> CollaborationPublic:
    """Open a collaboration on a pair; the caller is its first member and the one who invites."""
    print_ = idempotency.fingerprint(body.model_dump_json())
    if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is not None:
        return _as_now(session, org, made)
    pair = pairs.get(body.pair)
    collaboration = queries.create_collaboration(session, org.id, body.name, pair.id)
    public = to_public(session, collaboration, org)
    idempotency.remember(session, org.id, SCOPE, key, print_, public)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key won
        session.rollback()
        if (made := idempotency.replay(session, org.id, SCOPE, key, print_)) is None:
            raise
        return _as_now(session, org, made)
    return public


def _as_now(session: Session, org: Organization, collaboration_id: str) -> CollaborationPublic:
    collaboration = queries.get_collaboration(session, org.id, collaboration_id)
    if collaboration is None:
        raise idempotency.gone("collaboration", collaboration_id)
    return to_public(session, collaboration, org)


@router.get("")
def list_collaborations(session: SessionDep, org: CurrentOrg,
                        limit: int = Query(default=100, ge=1, le=1000)) -> CollaborationsPublic:
    """The collaborations the caller belongs to or is invited to, newest first."""
    rows = queries.list_collaborations(session, org.id, limit)
    return CollaborationsPublic(data=[to_public(session, c, org) for c in rows], count=len(rows))


@router.get("/{collaboration_id}")
def get_collaboration(collaboration: CollaborationDep, session: SessionDep, org: CurrentOrg
                      ) -> CollaborationPublic:
    """One collaboration: members with their status, and contributions."""
    return to_public(session, collaboration, org)


@router.post("/{collaboration_id}/invitations", responses=_CONFLICT | _FORBIDDEN)
def create_invitation(body: InvitationCreate, collaboration: CollaborationDep, session: SessionDep,
                      org: CurrentOrg) -> CollaborationPublic:
    """Invite an organization by its id; only the organization that opened the collaboration invites."""
    if collaboration.org_id != org.id:
        raise ApiError(Code.permission_denied, "Only the organization that opened the collaboration invites.")
    if queries.get_organization(session, body.organization_id) is None:  # 422: the URL's resource is there
        raise not_found("organization", body.organization_id, param="organization_id", code=Code.reference_not_found)
    if queries.membership(session, body.organization_id, collaboration.id) is not None:
        raise ApiError(Code.conflict, f"Organization {body.organization_id!r} is already invited or a member.",
                       param="organization_id")
    queries.invite(session, collaboration.id, body.organization_id)
    session.commit()
    return to_public(session, collaboration, org)


@router.post("/{collaboration_id}/join")
def join_collaboration(collaboration: CollaborationDep, session: SessionDep, org: CurrentOrg
                       ) -> CollaborationPublic:
    """Accept the caller's invitation (joining again changes nothing)."""
    member = queries.membership(session, org.id, collaboration.id)
    assert member is not None  # the loader found the caller among the members
    queries.join(session, member)
    session.commit()
    return to_public(session, collaboration, org)


@router.post("/{collaboration_id}/contributions", responses=_CONFLICT | _FORBIDDEN)
def create_contribution(collaboration_id: str, body: ContributionCreate, session: SessionDep,
                        org: CurrentOrg) -> ContributionPublic:
    """Contribute one of the caller's own checkpoints (one per organization): consent to pool it here."""
    collaboration = joined_collaboration(session, org, collaboration_id)
    checkpoint = queries.get_checkpoint(session, org.id, body.checkpoint_id)
    if checkpoint is None:  # 422, not 404: the collaboration the URL names is there
        raise not_found("checkpoint", body.checkpoint_id, param="checkpoint_id", code=Code.reference_not_found)
    if checkpoint.pair != collaboration.pair:
        raise ApiError(Code.conflict, f"Checkpoint {checkpoint.id!r} was made for pair {checkpoint.pair!r}; "
                       f"the collaboration pools pair {collaboration.pair!r}.", param="checkpoint_id")
    if (mine := queries.contribution_of(session, collaboration.id, org.id)) is not None:
        raise ApiError(Code.conflict, f"Your organization already contributed checkpoint {mine.checkpoint_id!r} "
                       f"({mine.id}); withdraw it first to contribute another.", param="checkpoint_id")
    row = queries.contribute(session, collaboration.id, checkpoint)
    session.commit()
    return contribution_public(row)


@router.delete("/{collaboration_id}/contributions/{contribution_id}", responses=_CONFLICT | _FORBIDDEN)
def delete_contribution(contribution_id: str, collaboration: CollaborationDep, session: SessionDep,
                        org: CurrentOrg) -> ContributionDeleted:
    """Withdraw the caller's contribution; refused while a queued or running upgrade reads it."""
    row = queries.get_contribution(session, collaboration.id, contribution_id)
    if row is None:
        raise not_found("contribution", contribution_id)
    if row.org_id != org.id:
        raise ApiError(Code.permission_denied, "Only the organization that contributed a checkpoint withdraws it.")
    checkpoint = queries.get_checkpoint(session, org.id, row.checkpoint_id)
    if checkpoint is not None and queries.checkpoint_in_use(session, checkpoint):
        raise ApiError(Code.conflict, f"Contribution {row.id!r} is used by a queued or running upgrade.")
    session.delete(row)
    session.commit()
    return ContributionDeleted(id=contribution_id)


@router.delete("/{collaboration_id}/members/{organization_id}", responses=_CONFLICT | _FORBIDDEN)
def remove_member(organization_id: str, collaboration: CollaborationDep, session: SessionDep,
                  org: CurrentOrg) -> Removed:
    """Leave (your own id; declines an invitation too) or, as the opener, remove a member; its contribution
    is withdrawn. Refused while a queued or running upgrade reads that contribution; the opener cannot
    leave (delete the collaboration instead)."""
    if organization_id != org.id and collaboration.org_id != org.id:
        raise ApiError(Code.permission_denied, "Only the organization that opened the collaboration removes "
                       "other members; any member may remove itself.")
    if organization_id == collaboration.org_id:
        raise ApiError(Code.conflict, "The organization that opened the collaboration cannot leave it; "
                       "delete the collaboration instead.", param="organization_id")
    member = queries.membership(session, organization_id, collaboration.id)
    if member is None:
        raise not_found("member", organization_id, param="organization_id")
    contribution = queries.contribution_of(session, collaboration.id, organization_id)
    if contribution is not None and queries.contribution_in_use(session, contribution):
        raise ApiError(Code.conflict, f"The contribution of {organization_id!r} is used by a queued or running "
                       "upgrade; try again when it has finished.")
    if contribution is not None:
        session.delete(contribution)
    session.delete(member)
    session.commit()
    return Removed(id=organization_id, object="collaboration.member")


@router.delete("/{collaboration_id}", responses=_CONFLICT | _FORBIDDEN)
def delete_collaboration(collaboration: CollaborationDep, session: SessionDep, org: CurrentOrg) -> Removed:
    """Delete the collaboration, its invitations and contributions (the checkpoints stay their owners');
    only its opener may, and only while it has no pooled delta and no upgrade in flight."""
    if collaboration.org_id != org.id:
        raise ApiError(Code.permission_denied, "Only the organization that opened the collaboration deletes it.")
    deltas, active = queries.collaboration_outputs(session, collaboration.id)
    if deltas or active:
        raise ApiError(Code.conflict, f"Collaboration {collaboration.id!r} has {deltas} pooled delta(s) and "
                       f"{active} upgrade(s) in flight; its members rely on them.")
    session.delete(collaboration)
    session.commit()
    return Removed(id=collaboration.id, object="collaboration")
