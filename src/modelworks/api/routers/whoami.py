"""`GET /api/v1/whoami`: who the server thinks is calling."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelworks.api.deps import IdentityDep
from modelworks.tenancy.access import is_platform_admin

router = APIRouter(tags=["identity"])


@router.get("/whoami")
def whoami(identity: IdentityDep) -> dict[str, Any]:
    """The caller's user, role, tenant and how they were identified."""
    return {
        "user": identity.user,
        "role": identity.role,
        "tenant": identity.tenant,
        "authenticated": identity.authenticated,
        "via": identity.via,
        "platform_admin": is_platform_admin(identity),
    }
