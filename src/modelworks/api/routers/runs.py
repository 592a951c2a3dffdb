"""`GET /api/v1/runs` (newest first, paged by id) and `GET /api/v1/runs/{id}/log`: what
`mw runs --json` and `mw logs --json` print, limited to the tenants the caller may see."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from modelworks.api.deps import IdentityDep, StoreDep
from modelworks.api.schemas import NAME, RunLog, RunPage
from modelworks.errors import ConfigError
from modelworks.registry.queries import read_log, run_by_id, runs
from modelworks.tenancy.access import visible_tenants

router = APIRouter(tags=["runs"])
STATUSES = r"^(queued|running|succeeded|failed|cancelled|skipped)$"


def _before(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise ConfigError("cursor: not a cursor this server made; pass next_cursor as given")
    return int(cursor)


@router.get("/runs", response_model=RunPage)
def list_runs(
    identity: IdentityDep,
    store: StoreDep,
    model: Annotated[str | None, Query(**NAME)] = None,
    tenant: Annotated[str | None, Query(**NAME)] = None,
    status: Annotated[str | None, Query(pattern=STATUSES)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
) -> dict[str, Any]:
    """Training runs, newest first; `next_cursor` pages on."""
    rows = runs(
        store,
        model=model,
        status=status,
        limit=limit + 1,
        tenant=tenant,
        tenants=visible_tenants(identity),
        before=_before(cursor),
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {"runs": rows, "next_cursor": str(rows[-1]["id"]) if more else None}


@router.get("/runs/{run_id}/log", response_model=RunLog)
def run_log(
    run_id: Annotated[int, Path(ge=1, le=2**62)],
    identity: IdentityDep,
    store: StoreDep,
    max_bytes: Annotated[int, Query(ge=1, le=16 * 2**20)] = 2**20,
) -> dict[str, Any]:
    """The run and the last `max_bytes` of its log (redacted by the worker as it was written)."""
    run, _tenant = run_by_id(store, run_id, visible_tenants(identity))
    text, truncated = read_log(run["log_path"], max_bytes)
    return {"run": run, "log": text, "truncated": truncated}
