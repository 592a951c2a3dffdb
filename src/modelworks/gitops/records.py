"""Promotion request records: listing, reading, the forge provider and the promotions lock."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from filelock import FileLock
from sqlalchemy import select

from modelworks.errors import ConfigError, ConflictError, NotFoundError
from modelworks.registry.models import Approval, PromotionRequest
from modelworks.tenancy.access import DEFAULT_TENANT

if TYPE_CHECKING:
    from modelworks.gitops.forge import ForgeProvider
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

STATES = ("open", "merged", "rejected", "closed")


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def request_dict(
    req: PromotionRequest, approvals: list[Approval], *, items: bool = True
) -> dict[str, Any]:
    """A request as plain data (for --json, the API and the CLI)."""
    out = {
        "id": req.id,
        "env": req.env,
        "state": req.state,
        "title": req.title,
        "author": req.author,
        "tenant": req.tenant,
        "branch": req.branch,
        "base_commit": req.base_commit,
        "head_commit": req.head_commit,
        "merge_commit": req.merge_commit,
        "required_approvals": req.required_approvals,
        "approvals": [a.actor for a in approvals if a.decision == "approve"],
        "decisions": [
            {
                "actor": a.actor,
                "decision": a.decision,
                "comment": a.comment,
                "at": _iso(a.created_at),
            }
            for a in approvals
        ],
        "forge": req.forge,
        "forge_id": req.forge_id,
        "forge_url": req.forge_url,
        "models": len(req.items or []),
        "created_at": _iso(req.created_at),
        "closed_at": _iso(req.closed_at),
    }
    if items:
        out["items"] = [
            {k: v for k, v in i.items() if k not in ("model_id", "blob")} for i in req.items or []
        ]
    return out


def _get(s: Any, request_id: int, tenants: frozenset[str] | None = None) -> PromotionRequest:
    """The request `request_id`; with `tenants` (the caller's visible tenants, None: all),
    another tenant's request is not found, with the very message of a missing one."""
    req: PromotionRequest | None = s.get(PromotionRequest, int(request_id))
    if req is None or (tenants is not None and (req.tenant or DEFAULT_TENANT) not in tenants):
        raise NotFoundError(f"no promotion request {request_id}; list them with `mw promotions`")
    return req


def _approvals(s: Any, request_id: int) -> list[Approval]:
    return list(
        s.scalars(select(Approval).where(Approval.request_id == request_id).order_by(Approval.id))
    )


def list_promotions(
    store: Store, state: str | None = None, tenants: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """Promotion requests of the `tenants` (None: all), newest first (without item tables)."""
    if state and state not in STATES:
        raise ConfigError(f"unknown request state {state!r}; expected one of {', '.join(STATES)}")
    with store.session() as s:
        q = select(PromotionRequest).order_by(PromotionRequest.id.desc())
        if state:
            q = q.where(PromotionRequest.state == state)
        if tenants is not None:
            q = q.where(PromotionRequest.tenant.in_(sorted(tenants)))
        reqs = list(s.scalars(q))
        by_req: dict[int, list[Approval]] = {}
        ids = [r.id for r in reqs]
        for i in range(0, len(ids), 500):
            chunk = select(Approval).where(Approval.request_id.in_(ids[i : i + 500]))
            for a in s.scalars(chunk.order_by(Approval.id)):
                by_req.setdefault(a.request_id, []).append(a)
        return [request_dict(r, by_req.get(r.id, []), items=False) for r in reqs]


def get_promotion(
    store: Store, request_id: int, tenants: frozenset[str] | None = None
) -> dict[str, Any]:
    """One promotion request with its delta table (another tenant's: NotFoundError)."""
    with store.session() as s:
        return request_dict(_get(s, request_id, tenants), _approvals(s, request_id))


def provider_for(ws: Workspace, environ: Mapping[str, str] | None = None) -> ForgeProvider:
    """The forge provider the workspace's `forge` settings ask for."""
    from modelworks.gitops.forge import provider_from_settings

    return provider_from_settings(
        ws.settings.forge.model_dump(),
        os.environ if environ is None else environ,
        state_dir=ws.state_dir,
    )


def _lock(ws: Workspace) -> FileLock:
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(ws.state_dir / "promotions.lock"))


def _require_open(req: PromotionRequest) -> None:
    if req.state != "open":
        raise ConflictError(
            f"promotion request {req.id} is {req.state}; only an open request "
            "can be approved or rejected"
        )
