"""`GET /api/v1/drift`: the drift reports `mw monitor` stored, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelworks.api.deps import IdentityDep, StoreDep
from modelworks.api.schemas import NAME, DriftList
from modelworks.registry.listing import drift_reports
from modelworks.tenancy.access import visible_tenants

router = APIRouter(tags=["monitoring"])


@router.get("/drift", response_model=DriftList)
def list_drift(
    identity: IdentityDep,
    store: StoreDep,
    model: Annotated[str | None, Query(**NAME)] = None,
    tenant: Annotated[str | None, Query(**NAME)] = None,
    env: Annotated[str | None, Query(**NAME)] = None,
    drifted: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Drift reports (score, drifted, samples, action, per-feature report)."""
    found = drift_reports(
        store,
        tenants=visible_tenants(identity),
        tenant=tenant,
        model=model,
        env=env,
        drifted=drifted,
        limit=limit,
    )
    return {"reports": found}
