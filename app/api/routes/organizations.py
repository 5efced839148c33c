"""The caller's organization: its id is what other organizations invite to a collaboration."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentOrg
from app.schemas.common import ERROR_RESPONSES
from app.schemas.organizations import OrganizationPublic

router = APIRouter(prefix="/v1/organizations", tags=["organizations"], responses=ERROR_RESPONSES)


@router.get("/me")
def get_my_organization(org: CurrentOrg) -> OrganizationPublic:
    """The organization the API key belongs to."""
    return OrganizationPublic.model_validate(org)
