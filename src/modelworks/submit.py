"""Submit: plan, then queue a run for each change without running it (`POST /api/v1/apply`).

`apply` plans, queues and then drains the queue itself. `submit` stops after the queue: the
runs wait as `queued` rows (runs/queue.py) until a process that executes the queue takes
them, a running controller (`mw controller`, `mw up`) on its next tick (see
`queued_models`) or a `mw apply` of the same models. Re-submitting the same inputs queues
nothing new and returns the runs already waiting.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from modelworks.apply import _ensure_models, _record_pipelines
from modelworks.errors import NotFoundError, did_you_mean
from modelworks.plan import ModelPlan, Plan, plan
from modelworks.registry import audit
from modelworks.registry.models import Model, Run
from modelworks.runs import queue
from modelworks.tenancy.access import DEFAULT_TENANT
from modelworks.tenancy.names import qualified, resolve_ref, split_ref

if TYPE_CHECKING:
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace


def tenant_of(mp: ModelPlan) -> str:
    """The tenant a planned model belongs to (its spec's folder or field, as the plan found)."""
    return mp.tenant or DEFAULT_TENANT


def plan_for(
    ws: Workspace,
    store: Store,
    names: list[str] | None,
    tenants: Collection[str] | None,
    *,
    allow_dirty: bool = False,
) -> Plan:
    """The plan of `names` (or all models) as a member of `tenants` may see it (None: all).

    Another tenant's model is *not found*, with the same message as a model that does not
    exist, and the "did you mean" hint only offers visible names.
    """
    if tenants is None:
        return plan(ws, store, names, allow_dirty=allow_dirty)
    p = plan(ws, store, None, allow_dirty=allow_dirty)
    mine = [m for m in p.models if tenant_of(m) in tenants]
    if not names:
        return Plan(mine)
    known = {m.name for m in mine}
    pairs = [(tenant_of(m), split_ref(m.name)[1]) for m in mine]
    wanted = set()
    for name in names:
        try:
            wanted.add(resolve_ref(name, pairs))
        except NotFoundError:
            hint = did_you_mean(name, known)
            raise NotFoundError(f"no model spec named {name!r}.{hint}") from None
    return Plan([m for m in mine if m.name in wanted])


def submit(
    ws: Workspace,
    store: Store,
    names: list[str] | None = None,
    *,
    actor: str,
    tenants: Collection[str] | None = None,
    allow_dirty: bool = False,
) -> dict[str, Any]:
    """Queue a run for each model the plan would train (of `tenants` only, when given).

    Returns the plan's summary, the runs now queued or running for those changes (`runs`,
    with ids), how many of them this call added (`queued`), the unchanged models (`skipped`)
    and the per-model errors, the same way `mw apply --json` reports them.
    """
    # No workspace lock: a controller's apply holds it for as long as training takes, and
    # what this writes is safe beside a running apply (model rows insert-or-skip, snapshots
    # are content-addressed, enqueue skips a change already queued or running).
    p = plan_for(ws, store, names, tenants, allow_dirty=allow_dirty)
    valid = [m for m in p.models if m.action != "error"]
    added = 0
    if p.changes:
        ids = _ensure_models(ws, store, valid)
        _record_pipelines(ws, store, p.changes)
        added = queue.enqueue(store, p.changes, ids, "auto")
    runs = _active_runs(store, p.changes)
    if added:
        _audit(store, actor, runs, added)
    return {
        "runs": runs,
        "queued": added,
        "skipped": [m.name for m in p.models if m.action == "unchanged"],
        "errors": [
            {"name": m.name, "error": "; ".join(m.reasons)} for m in p.models if m.action == "error"
        ],
        "summary": p.summary,
    }


def _active_runs(store: Store, changes: list[ModelPlan]) -> list[dict[str, Any]]:
    """The queued or running run of each change, in plan order."""
    wanted = {(m.name, m.fingerprint) for m in changes}
    found: dict[str, dict[str, Any]] = {}
    with store.session() as s:
        rows = s.execute(
            select(Run, Model.tenant, Model.name)
            .join(Model)
            .where(Run.status.in_(queue.ACTIVE))
            .order_by(Run.id)
        ).all()
        for run, tenant, name in rows:
            ref = qualified(tenant, name)
            # plan names a tenant's model `tenant/name` (bare for the default tenant)
            key = ref if (ref, run.fingerprint) in wanted else name
            if (key, run.fingerprint) in wanted:
                found[key] = {
                    "id": run.id,
                    "model": ref,
                    "tenant": tenant or DEFAULT_TENANT,
                    "version": run.version,
                    "status": run.status,
                    "trigger": run.trigger,
                }
    return [found[m.name] for m in changes if m.name in found]


def _audit(store: Store, actor: str, runs: list[dict[str, Any]], added: int) -> None:
    by_tenant: dict[str, list[int]] = {}
    for r in runs:
        by_tenant.setdefault(r["tenant"], []).append(r["id"])
    events = [
        audit.event(
            "runs.queued",
            "runs",
            actor=actor,
            tenant=tenant,
            after={"runs": ids, "added": added},
        )
        for tenant, ids in sorted(by_tenant.items())
    ]
    audit.record(store, events)


def cancel_queued(store: Store, names: Collection[str], why: str) -> int:
    """Cancel the queued runs of these models (`tenant/name`, bare for the default tenant),
    with `why` as the run's error; returns how many. A run already running is left alone."""
    from datetime import UTC, datetime

    if not names:
        return 0
    now, cancelled = datetime.now(UTC), 0
    with store.session() as s:
        rows = s.execute(
            select(Run, Model.tenant, Model.name).join(Model).where(Run.status == "queued")
        ).all()
        for run, tenant, name in rows:
            if qualified(tenant, name) in names:
                run.status, run.error, run.finished_at, run.reason = "cancelled", why, now, None
                cancelled += 1
        s.commit()
    return cancelled


def queued_models(store: Store) -> list[str]:
    """The models with runs waiting in the queue (what a controller tick should apply)."""
    with store.session() as s:
        rows = s.execute(
            select(Model.tenant, Model.name).join(Run).where(Run.status == "queued").distinct()
        ).all()
    return sorted({qualified(tenant, name) for tenant, name in rows})
