"""`GET/POST /api/v1/tenants`, `GET /api/v1/tenants/{name}`: the tenants one may see."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from starlette.concurrency import run_in_threadpool

from modelworks.api.deps import IdentityDep, StoreDep, WorkspaceDep
from modelworks.api.schemas import NAME, TenantInfo, TenantList
from modelworks.errors import ConfigError, PermissionDeniedError
from modelworks.registry import tenant_views as views
from modelworks.registry import tenants as registry
from modelworks.tenancy.access import is_platform_admin, require_visible, visible_tenants

router = APIRouter(tags=["tenants"])
NameArg = Annotated[str, Path(**NAME)]


def _info(ws: Any, name: str, settings: Any, view: dict[str, Any]) -> dict[str, Any]:
    """`mw tenant list|show --json`'s fields for the tenant, plus where and how it is declared."""
    return {
        **view,
        "name": name,
        "declared": name in registry.declared(ws),
        "settings": settings.model_dump(mode="json"),
    }


@router.get("/tenants", response_model=TenantList)
def list_tenants(identity: IdentityDep, ws: WorkspaceDep, store: StoreDep) -> dict[str, Any]:
    """The tenants the caller may see (a platform admin sees all)."""
    seen = visible_tenants(identity)
    found = registry.tenants(ws, store)
    rows = {r["name"]: r for r in views.list_tenants(ws, store)}
    return {
        "tenants": [
            _info(ws, name, t, rows.get(name, {}))
            for name, t in found.items()
            if seen is None or name in seen
        ]
    }


@router.get("/tenants/{name}", response_model=TenantInfo)
def get_tenant(
    name: NameArg, identity: IdentityDep, ws: WorkspaceDep, store: StoreDep
) -> dict[str, Any]:
    """One tenant's settings; another tenant's is 404."""
    require_visible(identity, name, f"tenant {name!r}")
    shown = views.show_tenant(ws, store, name)
    return _info(ws, name, registry.settings_of(ws, name, store), shown)


@router.post("/tenants", response_model=TenantInfo, status_code=201)
async def create_tenant(
    name: Annotated[str, Body(embed=True, **NAME)],
    identity: IdentityDep,
    ws: WorkspaceDep,
    store: StoreDep,
    settings: Annotated[dict[str, Any] | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    """Create or replace an API-managed tenant (platform admins only)."""
    if not is_platform_admin(identity):
        raise PermissionDeniedError(
            f"{identity.user} is {identity.role} in {identity.tenant} and cannot create tenants: "
            "that needs a platform admin (admin in the default tenant)"
        )
    if "\\u0000" in json.dumps(settings or {}):
        raise ConfigError(f"tenant {name!r}: settings must not contain NUL characters")
    saved = await run_in_threadpool(registry.save_tenant, ws, store, name, settings or {})
    return _info(ws, name, saved, await run_in_threadpool(views.show_tenant, ws, store, name))
