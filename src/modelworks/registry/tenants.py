"""The tenants a workspace has: those declared in modelworks.yaml and those an admin created
through the API (stored in the registry's `tenants` table), one answer for every caller.

A tenant declared in the file is owned by the file: the API cannot change or delete it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelworks.errors import ConfigError, ConflictError, NotFoundError
from modelworks.names import check_name
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.config import TenantSettings

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def declared(ws: Workspace) -> dict[str, TenantSettings]:
    """The tenants of modelworks.yaml (validated when the settings were loaded)."""
    return dict(ws.settings.tenants)


def tenants(ws: Workspace, store: Store | None = None) -> dict[str, TenantSettings]:
    """Every tenant: the file's, then the registry's API-created ones (sorted by name)."""
    found = declared(ws)
    if store is not None:
        from sqlalchemy import select

        from modelworks.registry.models import Tenant

        with store.session() as s:
            for row in s.scalars(select(Tenant).where(Tenant.settings.is_not(None))):
                if row.name not in found:
                    found[row.name] = TenantSettings.model_validate(row.settings)
    return dict(sorted(found.items()))


def has_tenants(ws: Workspace, store: Store | None = None) -> bool:
    """True once any tenant is declared: from then on every spec must belong to one."""
    return bool(tenants(ws, store))


def settings_of(ws: Workspace, tenant: str, store: Store | None = None) -> TenantSettings:
    """The settings of `tenant`; the default tenant always exists (with defaults)."""
    found = tenants(ws, store)
    if tenant in found:
        return found[tenant]
    if tenant == DEFAULT_TENANT:
        return TenantSettings()
    raise NotFoundError(f"tenant {tenant!r} not found")


def approvals_required(ws: Workspace, tenant: str, env: str, store: Store | None = None) -> int:
    """Approvals a promotion of `tenant` to `env` needs: the tenant's count, never fewer than
    the workspace's `environments.<env>.approvals`."""
    base = ws.settings.environments[env].approvals if env in ws.settings.environments else 1
    own = settings_of(ws, tenant, store).approvals.get(env)
    return base if own is None else max(base, own)


def save_tenant(ws: Workspace, store: Store, name: str, settings: dict[str, Any]) -> TenantSettings:
    """Create or replace an API-managed tenant; ConfigError on bad fields, ConflictError for a
    tenant the file declares."""
    from pydantic import ValidationError

    from modelworks.registry.models import Tenant

    check_name("tenant", name, "tenant")
    if name in declared(ws):
        raise ConflictError(
            f"tenant {name!r} is declared in modelworks.yaml: change it there, not through the API"
        )
    try:
        parsed = TenantSettings.model_validate(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "tenant"
        raise ConfigError(f"tenant {name!r}: field {field!r}: {first['msg']}") from None
    quotas = parsed.quotas
    with store.session() as s:
        row = s.get(Tenant, name) or Tenant(name=name)
        row.display_name = parsed.display_name
        row.weight = parsed.weight
        row.max_concurrent_runs = quotas.max_concurrent_runs
        row.max_queued_runs = quotas.max_queued_runs
        row.max_models = quotas.max_models
        row.max_artifact_bytes = quotas.max_artifact_bytes
        row.settings = parsed.model_dump(mode="json")
        row.updated_at = datetime.now(UTC)
        s.add(row)
    return parsed


def sync_declared(ws: Workspace, store: Store) -> int:
    """Upsert the file's tenants into the registry's `tenants` table (display name, weight,
    quotas; `settings` stays NULL: a non-NULL one marks an API-created tenant). Returns how
    many rows changed; a row another plan sharing the registry inserted first is left to it."""
    from sqlalchemy.exc import IntegrityError

    try:
        return _upsert_declared(ws, store)
    except IntegrityError:
        return 0


def _upsert_declared(ws: Workspace, store: Store) -> int:
    from modelworks.registry.models import Tenant

    changed = 0
    with store.session() as s:
        for name, t in declared(ws).items():
            row = s.get(Tenant, name) or Tenant(name=name)
            q = t.quotas
            values = {
                "display_name": t.display_name,
                "weight": t.weight,
                "max_concurrent_runs": q.max_concurrent_runs,
                "max_queued_runs": q.max_queued_runs,
                "max_models": q.max_models,
                "max_artifact_bytes": q.max_artifact_bytes,
                "settings": None,
            }
            if row in s and all(getattr(row, k) == v for k, v in values.items()):
                continue
            for key, value in values.items():
                setattr(row, key, value)
            row.updated_at = datetime.now(UTC)
            s.add(row)
            changed += 1
    return changed


def source_of(ws: Workspace, tenant: str) -> str:
    """`file` for a tenant modelworks.yaml declares, `api` for one created through the API."""
    return "file" if tenant in declared(ws) else "api"


def oci_namespace(ws: Workspace, tenant: str, store: Store | None = None) -> str:
    """The OCI namespace a tenant's models are pushed under: the workspace's `oci.namespace`
    for the default tenant (as before tenants), else the tenant's (default: its name)."""
    if (tenant or DEFAULT_TENANT) == DEFAULT_TENANT:
        return ws.settings.oci.namespace
    try:
        return settings_of(ws, tenant, store).namespace(tenant)
    except NotFoundError:
        return tenant


def repository_of(ws: Workspace, tenant: str, name: str, store: Store | None = None) -> str:
    """The model's repository in the local OCI store: `name` for the default tenant, else
    `<tenant's namespace>/<name>`."""
    from modelworks.tenancy.names import oci_repository

    return oci_repository(tenant, name, oci_namespace(ws, tenant, store))
