"""`GET /api/v1/models` (paged, filtered), one model, one version: what `mw status --json`
and `mw show --json` print, limited to the tenants the caller may see."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from modelworks.api.deps import IdentityDep, StoreDep
from modelworks.api.schemas import NAME, ModelInfo, ModelPage, VersionInfo
from modelworks.errors import NotFoundError
from modelworks.registry.listing import ModelFilter, model_page
from modelworks.registry.queries import show
from modelworks.tenancy.access import require_visible, visible_tenants

router = APIRouter(tags=["models"])
Tenant = Annotated[str, Path(**NAME)]
Name = Annotated[str, Path(**NAME)]
Word = {"min_length": 1, "max_length": 128, "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"}


@router.get("/models", response_model=ModelPage)
def list_models(
    identity: IdentityDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
    tenant: Annotated[str | None, Query(**NAME)] = None,
    pipeline: Annotated[str | None, Query(**Word)] = None,
    env: Annotated[str | None, Query(**NAME)] = None,
    status: Annotated[str | None, Query(**Word)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """Models ordered by (tenant, name), `limit` a page; pass `next_cursor` for the next."""
    f = ModelFilter(tenant=tenant, pipeline=pipeline, env=env, status=status, q=q)
    return model_page(store, f, limit=limit, cursor=cursor, tenants=visible_tenants(identity))


@router.get("/models/{tenant}/{name}", response_model=ModelInfo)
def get_model(tenant: Tenant, name: Name, identity: IdentityDep, store: StoreDep) -> Any:
    """Versions, metrics, lineage, artifact and deployments of one model."""
    require_visible(identity, tenant, f"model {tenant}/{name}")
    return show(store, name, tenant=tenant)


@router.get("/models/{tenant}/{name}/versions/{version}", response_model=VersionInfo)
def get_version(
    tenant: Tenant,
    name: Name,
    version: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")],
    identity: IdentityDep,
    store: StoreDep,
) -> Any:
    """One version of a model: metrics, gates, lineage, scan, signature, artifact."""
    require_visible(identity, tenant, f"model {tenant}/{name}")
    info = show(store, name, tenant=tenant)
    for v in info["versions"]:
        if v["version"] == version:
            return v
    raise NotFoundError(f"model {tenant}/{name} has no version {version!r}")
