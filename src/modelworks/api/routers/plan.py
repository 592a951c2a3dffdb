"""`POST /api/v1/plan` (a dry run: what `mw plan --json` prints) and `POST /api/v1/apply`
(queues the plan's runs and returns their ids without waiting for training)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from modelworks.api.deps import IdentityDep, StoreDep, WorkspaceDep
from modelworks.api.routers._fields import STRICT, ModelRefs, acting
from modelworks.submit import plan_for, submit
from modelworks.tenancy.access import visible_tenants

router = APIRouter(tags=["plan"])


class PlanBody(BaseModel):
    """Which models to plan (default all you may see), as `mw plan [MODELS] [--allow-dirty]`."""

    model_config = STRICT
    models: ModelRefs = []
    allow_dirty: bool = False


@router.post("/plan")
def plan_models(
    ws: WorkspaceDep, store: StoreDep, identity: IdentityDep, body: PlanBody | None = None
) -> dict[str, Any]:
    """What apply would train and why: `{"models": [...], "summary": {...}}`."""
    body = body or PlanBody()
    identity.require("viewer", "plan")
    p = plan_for(
        ws, store, body.models or None, visible_tenants(identity), allow_dirty=body.allow_dirty
    )
    return p.to_dict()


@router.post("/apply", status_code=202)
def apply_models(
    ws: WorkspaceDep, store: StoreDep, identity: IdentityDep, body: PlanBody | None = None
) -> dict[str, Any]:
    """Queue a run per change; a running controller (`mw up`) trains them.

    `{"runs": [{"id", "model", "tenant", "version", "status", "trigger"}], "queued": N,
    "skipped": [...], "errors": [{"name", "error"}], "summary": {...}}`.
    """
    body = body or PlanBody()
    identity.require("developer", "apply")
    return submit(
        ws,
        store,
        body.models or None,
        actor=acting(identity),
        tenants=visible_tenants(identity),
        allow_dirty=body.allow_dirty,
    )
