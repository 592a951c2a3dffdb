"""Paged, filtered reads for the control-plane API: models by keyset on (tenant, name), drift
reports newest first. A page's rows are the rows `mw status --json` prints.

Keyset paging: the cursor names the last (tenant, name) of a page, and the next page is the
models after it in that order, read through the unique (tenant, name) index, so page 90 costs
what page 1 costs.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from modelworks.errors import ConfigError
from modelworks.registry.models import Deployment, DriftReportRow, Model, ModelVersion
from modelworks.registry.queries import status_rows

if TYPE_CHECKING:
    from modelworks.registry.store import Store


@dataclass(frozen=True)
class ModelFilter:
    """What `GET /api/v1/models` may filter on (None: no filter)."""

    tenant: str | None = None
    pipeline: str | None = None
    env: str | None = None
    status: str | None = None
    q: str | None = None


def encode_cursor(tenant: str, name: str) -> str:
    """An opaque cursor for the page after (tenant, name)."""
    raw = json.dumps([tenant, name], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(tenant, name) from a cursor; ConfigError (400) for anything we did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        value = None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ConfigError(
            "cursor: not a cursor this server made; pass next_cursor from the previous page"
        )
    return value[0], value[1]


def _filtered(f: ModelFilter, tenants: frozenset[str] | None) -> Any:
    q = select(Model)
    if tenants is not None:
        q = q.where(Model.tenant.in_(tenants))
    if f.tenant is not None:
        q = q.where(Model.tenant == f.tenant)
    if f.pipeline is not None:
        q = q.where(Model.pipeline == f.pipeline)
    if f.q:
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Model.name.like(f"%{escaped}%", escape="\\"))
    if f.env is not None:
        q = q.where(Model.id.in_(select(Deployment.model_id).where(Deployment.env == f.env)))
    if f.status is not None:
        latest = select(func.max(ModelVersion.id)).group_by(ModelVersion.model_id)
        with_status = select(ModelVersion.model_id).where(
            ModelVersion.id.in_(latest), ModelVersion.status == f.status
        )
        q = q.where(Model.id.in_(with_status))
    return q


def model_page(
    store: Store,
    f: ModelFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
    tenants: frozenset[str] | None = None,
) -> dict[str, Any]:
    """`{"items": [status rows], "next_cursor": str | None}`, ordered by (tenant, name)."""
    q = _filtered(f, tenants)
    if cursor is not None:
        after_tenant, after_name = decode_cursor(cursor)
        q = q.where(
            or_(
                Model.tenant > after_tenant,
                and_(Model.tenant == after_tenant, Model.name > after_name),
            )
        )
    q = q.order_by(Model.tenant, Model.name).limit(limit + 1)
    with store.session() as s:
        models = list(s.scalars(q))
        more = len(models) > limit
        models = models[:limit]
        items = status_rows(s, models)
    last = models[-1] if more and models else None
    return {
        "items": items,
        "next_cursor": encode_cursor(last.tenant, last.name) if last else None,
    }


def drift_reports(
    store: Store,
    *,
    tenants: frozenset[str] | None = None,
    tenant: str | None = None,
    model: str | None = None,
    env: str | None = None,
    drifted: bool | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Stored drift reports (what `mw monitor` recorded), newest first."""
    q = select(DriftReportRow, Model.name, Model.tenant).join(Model)
    if tenants is not None:
        q = q.where(Model.tenant.in_(tenants))
    if tenant is not None:
        q = q.where(Model.tenant == tenant)
    if model is not None:
        q = q.where(Model.name == model)
    if env is not None:
        q = q.where(DriftReportRow.env == env)
    if drifted is not None:
        q = q.where(DriftReportRow.drifted.is_(drifted))
    q = q.order_by(DriftReportRow.id.desc()).limit(limit)
    with store.session() as s:
        return [_drift_dict(row, name, ten) for row, name, ten in s.execute(q)]


def _drift_dict(row: DriftReportRow, model: str, tenant: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "model": model,
        "tenant": tenant,
        "env": row.env,
        "version": row.version,
        "score": row.score,
        "drifted": row.drifted,
        "samples": row.samples,
        "action": row.action,
        "report": row.report,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }
