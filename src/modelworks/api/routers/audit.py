"""`GET /api/v1/audit`: audit events, oldest first, filtered like `mw audit`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelworks.api.deps import IdentityDep, StoreDep
from modelworks.api.schemas import NAME, AuditList
from modelworks.registry.audit import rows
from modelworks.tenancy.access import visible_tenants

router = APIRouter(tags=["audit"])
Pattern = {"min_length": 1, "max_length": 256, "pattern": r"^[A-Za-z0-9._/*@:-]+$"}


@router.get("/audit", response_model=AuditList)
def list_audit(
    identity: IdentityDep,
    store: StoreDep,
    action: Annotated[str | None, Query(**Pattern)] = None,
    actor: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
    model: Annotated[str | None, Query(**Pattern)] = None,
    tenant: Annotated[str | None, Query(**NAME)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The last `limit` events (who did what, when, before and after) the caller may see."""
    seen = visible_tenants(identity)
    if seen is not None:
        if tenant is not None and tenant not in seen:
            return {"events": []}
        (tenant,) = seen
    events = rows(store, action=action, actor=actor, target=model, tenant=tenant, limit=limit)
    return {"events": events}
