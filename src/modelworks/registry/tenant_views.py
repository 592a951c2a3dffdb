"""What `mw tenant list` and `mw tenant show T` print (and the API can return): each tenant's
settings, where it is declared, and its usage against its quotas."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelworks.errors import NotFoundError
from modelworks.registry.tenants import (
    approvals_required,
    oci_namespace,
    source_of,
    tenants,
)
from modelworks.registry.usage import model_counts, usage

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.tenancy.config import TenantSettings
    from modelworks.workspace import Workspace


def _row(ws: Workspace, name: str, t: TenantSettings, models: int) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": t.display_name or name,
        "weight": t.weight,
        "quotas": t.quotas.model_dump(),
        "models": models,
        "source": source_of(ws, name),
    }


def list_tenants(ws: Workspace, store: Store) -> list[dict[str, Any]]:
    """Every tenant (declared and API-created), by name, with its count of registered models."""
    counts = model_counts(store)
    return [_row(ws, name, t, counts.get(name, 0)) for name, t in tenants(ws, store).items()]


def show_tenant(ws: Workspace, store: Store, name: str) -> dict[str, Any]:
    """One tenant in full; NotFoundError for a tenant neither declared nor API-created."""
    found = tenants(ws, store)
    if name not in found:
        shown = ", ".join(found) or "none are declared"
        raise NotFoundError(f"tenant {name!r} not found (tenants: {shown})")
    t = found[name]
    use = usage(store, ws.oci_dir, [name]).get(name)
    q = t.quotas
    models, used_bytes = (use.models, use.artifact_bytes) if use else (0, 0)
    return {
        **_row(ws, name, t, models),
        "data_roots": t.roots(name),
        "pipelines": t.pipelines,
        "environments": t.environments,
        "approvals": {
            env: approvals_required(ws, name, env, store)
            for env in ws.settings.environments
            if t.allows_env(env)
        },
        "oci_namespace": oci_namespace(ws, name, store),
        "usage": {
            "models": {"used": models, "max": q.max_models},
            "artifact_bytes": {"used": used_bytes, "max": q.max_artifact_bytes},
        },
    }
