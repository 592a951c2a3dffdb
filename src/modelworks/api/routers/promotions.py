"""Promotion requests: list, open (`mw promote`), show, approve, reject.

Each answer is what the matching CLI command prints with `--json`. Another tenant's request
is *not found* (the same 404 as one that does not exist) for reads and decisions alike, so an
approver of tenant A can never approve, reject or even see tenant B's request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from modelworks.api.deps import IdentityDep, StoreDep, WorkspaceDep
from modelworks.api.routers._fields import STRICT, Label, ModelRefs, Name, Note, acting
from modelworks.errors import NotFoundError
from modelworks.gitops.promote import approve, get_promotion, list_promotions, promote, reject
from modelworks.registry.store import Store
from modelworks.security.identity import Identity
from modelworks.tenancy.access import filter_visible, require_in_tenant, visible_tenants

router = APIRouter(prefix="/promotions", tags=["promotions"])

RequestId = Annotated[int, Path(ge=1, le=2**62, description="Promotion request id.")]
State = Literal["open", "merged", "rejected", "closed"]


class PromoteBody(BaseModel):
    """What `mw promote [MODELS] --to --from --all-changed --pipeline --label` takes."""

    model_config = STRICT
    models: ModelRefs = []
    to: Name = "prod"
    from_env: Name = Field("test", alias="from")
    all_changed: bool = False
    pipeline: Name | None = None
    labels: Annotated[list[Label], Field(max_length=20)] = []
    tenant: Name | None = None


class ApproveBody(BaseModel):
    model_config = STRICT
    comment: Note | None = None


class RejectBody(BaseModel):
    model_config = STRICT
    reason: Annotated[Note, Field(min_length=1)]


def _visible(store: Store, identity: Identity, request_id: int, role: str, action: str) -> None:
    """404 unless `identity` may see the request (same message as a missing one); 403 below
    `role`."""
    what = f"promotion request {request_id}"
    try:
        tenant = get_promotion(store, request_id)["tenant"]
    except NotFoundError:
        raise NotFoundError(f"{what} not found") from None
    require_in_tenant(identity, tenant, role, action, what)


@router.get("")
def promotions(
    store: StoreDep, identity: IdentityDep, state: State | None = None
) -> dict[str, Any]:
    """Requests newest first: `{"promotions": [...]}` (`mw promotions --json`)."""
    identity.require("viewer", "list promotion requests")
    return {"promotions": filter_visible(identity, list_promotions(store, state), "tenant")}


@router.post("", status_code=201)
def open_promotion(
    ws: WorkspaceDep, store: StoreDep, identity: IdentityDep, body: PromoteBody
) -> dict[str, Any]:
    """Open one request for the selected models (`mw promote --json`)."""
    identity.require("developer", f"promote to {body.to}")
    return promote(
        ws,
        store,
        body.models or None,
        to=body.to,
        source=body.from_env,
        all_changed=body.all_changed,
        pipeline=body.pipeline,
        labels=body.labels or None,
        actor=acting(identity),
        tenant=body.tenant,
        tenants=visible_tenants(identity),
    )


@router.get("/{request_id}")
def promotion(store: StoreDep, identity: IdentityDep, request_id: RequestId) -> dict[str, Any]:
    """One request with its table of metric deltas (`mw promotion ID --json`)."""
    _visible(store, identity, request_id, "viewer", "read promotion requests")
    return get_promotion(store, request_id)


@router.post("/{request_id}/approve")
def approve_promotion(
    ws: WorkspaceDep,
    store: StoreDep,
    identity: IdentityDep,
    request_id: RequestId,
    body: ApproveBody | None = None,
) -> dict[str, Any]:
    """Approve; the last required approval merges (`mw approve ID --json`)."""
    _visible(store, identity, request_id, "approver", f"approve promotion request {request_id}")
    comment = body.comment if body else None
    return approve(ws, store, request_id, actor=acting(identity), comment=comment)


@router.post("/{request_id}/reject")
def reject_promotion(
    ws: WorkspaceDep,
    store: StoreDep,
    identity: IdentityDep,
    request_id: RequestId,
    body: RejectBody,
) -> dict[str, Any]:
    """Reject: closed, nothing merged (`mw reject ID --reason R --json`)."""
    _visible(store, identity, request_id, "approver", f"reject promotion request {request_id}")
    return reject(ws, store, request_id, actor=acting(identity), reason=body.reason)
