"""Who may see and act on a tenant's objects.

The rules every read and write path applies, in one place:

- A local identity (`auth.mode: local`, the single-user laptop) sees every tenant.
- A platform admin (role `admin` in the `default` tenant, the platform's own tenant: what
  `mw token create --bootstrap` makes) sees every tenant and may do anything.
- Anyone else sees only their own tenant. Another tenant's object is *not found* (404 over
  HTTP), never *forbidden*: the answer must not confirm that it exists.
- Within a tenant one may see, a role check decides what one may do (403 when too low).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from modelworks.errors import NotFoundError

if TYPE_CHECKING:
    from modelworks.security.identity import Identity

DEFAULT_TENANT = "default"
T = TypeVar("T")


def is_platform_admin(identity: Identity) -> bool:
    """True for an admin of the platform's own tenant, or the local single user."""
    return identity.via == "local" or (
        identity.role == "admin" and identity.tenant == DEFAULT_TENANT
    )


def can_see(identity: Identity, tenant: str) -> bool:
    """True when `identity` may read objects of `tenant`."""
    return is_platform_admin(identity) or identity.tenant == tenant


def visible_tenants(identity: Identity) -> frozenset[str] | None:
    """The tenants `identity` may read, or None for all of them (filter queries with this)."""
    return None if is_platform_admin(identity) else frozenset({identity.tenant})


def filter_visible(identity: Identity, items: Iterable[T], tenant_of: str) -> list[T]:
    """The dicts (or objects) among `items` whose `tenant_of` key/attribute is visible."""
    seen = visible_tenants(identity)
    if seen is None:
        return list(items)
    out = []
    for item in items:
        value = item.get(tenant_of) if isinstance(item, dict) else getattr(item, tenant_of)
        if (value or DEFAULT_TENANT) in seen:
            out.append(item)
    return out


def require_visible(identity: Identity, tenant: str, what: str) -> None:
    """NotFoundError (`what` not found) unless `identity` may see `tenant`."""
    if not can_see(identity, tenant):
        raise NotFoundError(f"{what} not found")


def require_in_tenant(identity: Identity, tenant: str, role: str, action: str, what: str) -> None:
    """`what` must be visible to `identity` (else 404) and `identity` must hold `role` (else 403).

    An approver of tenant A acting on tenant B's object gets *not found*, so they can never
    approve it, nor learn that it exists.
    """
    require_visible(identity, tenant, what)
    identity.require(role, action)
