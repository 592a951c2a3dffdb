"""`POST /api/v1/rollbacks`: put a model's previous (or named) version back (`mw rollback`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from modelworks.api.deps import IdentityDep, StoreDep, WorkspaceDep
from modelworks.api.routers._fields import STRICT, ModelRef, Name, acting
from modelworks.errors import NotFoundError
from modelworks.gitops.rollback import rollback
from modelworks.registry.queries import get_model
from modelworks.registry.store import Store
from modelworks.security.identity import Identity
from modelworks.tenancy.access import DEFAULT_TENANT, require_in_tenant

router = APIRouter(tags=["deploy"])


class RollbackBody(BaseModel):
    """What `mw rollback MODEL --env E [--to VERSION]` takes."""

    model_config = STRICT
    model: ModelRef
    env: Name = "prod"
    to: Name | None = None


def _check(store: Store, identity: Identity, model: str, role: str, action: str) -> None:
    """404 (one message whether missing or another tenant's) unless visible; 403 below `role`."""
    try:
        with store.session() as s:
            tenant = get_model(s, model).tenant or DEFAULT_TENANT
    except NotFoundError:
        raise NotFoundError(f"model {model} not found") from None
    require_in_tenant(identity, tenant, role, action, f"model {model}")


@router.post("/rollbacks", status_code=201)
def rollbacks(
    ws: WorkspaceDep, store: StoreDep, identity: IdentityDep, body: RollbackBody
) -> dict[str, Any]:
    """A revert commit in the deploy repo: `{"model", "env", "from", "to", "commit", ...}`
    (`mw rollback --json`). A gated environment needs an approver, as on the CLI."""
    gated = getattr(ws.settings.environments.get(body.env), "approvals", 0) > 0
    role = "approver" if gated else "developer"
    _check(store, identity, body.model, role, f"roll back {body.model} in {body.env}")
    return rollback(ws, store, body.model, env=body.env, to=body.to, actor=acting(identity))
