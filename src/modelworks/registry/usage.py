"""What each tenant uses against its quotas: registered models and the bytes of its artifacts.

An artifact's size is the sum of its OCI manifest's config and layer sizes (what the blobs
take in the store and in a registry), read from the workspace's OCI store by digest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from modelworks.registry.models import Model, ModelVersion
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from pathlib import Path

    from modelworks.registry.store import Store


@dataclass
class Usage:
    """One tenant's registered models and artifact bytes (and the latest size per model)."""

    names: set[str] = field(default_factory=set)  # qualified names of its registered models
    artifact_bytes: int = 0
    latest_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def models(self) -> int:
        return len(self.names)


def manifest_bytes(oci_dir: Path, digest: str) -> int:
    """Bytes of the image with manifest `digest` (manifest, config and layers); 0 if absent."""
    algo, _, hexpart = digest.partition(":")
    try:
        text = (oci_dir / "blobs" / algo / hexpart).read_bytes()
        manifest = json.loads(text)
        parts = [manifest.get("config") or {}, *(manifest.get("layers") or [])]
        return len(text) + sum(int(p.get("size") or 0) for p in parts if isinstance(p, dict))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def model_counts(store: Store) -> dict[str, int]:
    """Registered models per tenant."""
    with store.session() as s:
        rows = s.execute(select(Model.tenant, func.count(Model.id)).group_by(Model.tenant))
        return {str(t): int(n) for t, n in rows}


def model_names(store: Store, tenants: set[str] | None) -> dict[str, set[str]]:
    """Qualified names of the registered models per tenant."""
    q = select(Model.tenant, Model.name)
    if tenants is not None:
        q = q.where(Model.tenant.in_(sorted(tenants)))
    found: dict[str, set[str]] = {}
    with store.session() as s:
        for tenant, name in s.execute(q).tuples():
            found.setdefault(tenant, set()).add(qualified(tenant, name))
    return found


def usage(store: Store, oci_dir: Path, tenants: Iterable[str] | None = None) -> dict[str, Usage]:
    """Usage of each tenant (only of `tenants` when given): models and artifact bytes."""
    wanted = None if tenants is None else set(tenants)
    found: dict[str, Usage] = {}
    for tenant, names in model_names(store, wanted).items():
        found[tenant] = Usage(names=names)
    q = (
        select(Model.tenant, Model.name, ModelVersion.artifact_digest)
        .join(ModelVersion)
        .where(ModelVersion.status == "registered", ModelVersion.artifact_digest.is_not(None))
        .order_by(ModelVersion.id)
    )
    if wanted is not None:
        q = q.where(Model.tenant.in_(sorted(wanted)))
    sizes: dict[str, int] = {}
    with store.session() as s:
        rows = s.execute(q).tuples().all()
    for tenant, name, digest in rows:
        key = str(digest)
        if key not in sizes:
            sizes[key] = manifest_bytes(oci_dir, key)
        use = found.setdefault(tenant, Usage())
        use.artifact_bytes += sizes[key]
        use.latest_bytes[qualified(tenant, name)] = sizes[key]
    return found
