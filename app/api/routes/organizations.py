"""The caller's organization: its id is what other organizations invite to a collaboration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import CurrentOrg, is_admin_key
from app.schemas.common import ERROR_RESPONSES
from app.schemas.organizations import OrganizationPublic

router = APIRouter(prefix="/v1/organizations", tags=["organizations"], responses=ERROR_RESPONSES)


@router.get("/me")
def get_my_organization(org: CurrentOrg, admin: Annotated[bool, Depends(is_admin_key)]) -> OrganizationPublic:
    """The organization the API key belongs to, and whether the key is an admin key."""
    return OrganizationPublic.model_validate(org).model_copy(update={"admin": admin})
