"""The durable job queue: Run rows move queued → running → succeeded | failed | gated | rejected.

A killed apply or controller leaves rows `running`; the next one (holding the workspace lock,
so the old one is surely dead) puts them back in the queue. Failures that may pass on a
second try (a crash, a timeout, an I/O or memory error) go back to the queue with a backoff
until `executor.retries` is used up; errors the line diagnosed (a missing step, bad data) and
errors a retry repeats (a ValueError or TypeError from bad parameters or data, an ImportError:
runs/worker.py `retryable`) do not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from modelworks.registry.models import Model, ModelVersion, Run
from modelworks.runs.fairshare import DEFAULT, FairShare, Share
from modelworks.tenancy.names import qualified

if TYPE_CHECKING:
    from modelworks.plan import ModelPlan
    from modelworks.registry.store import Store
    from modelworks.workspace import Workspace

ACTIVE = ("queued", "running")
TRIGGERS = ("spec", "data", "pipeline", "schedule", "drift", "manual")


def trigger_of(reasons: list[str]) -> str:
    """Why a model retrains, from the plan's reasons: data, pipeline or spec change."""
    first = reasons[0] if reasons else ""
    if first.startswith("data "):
        return "data"
    if first.startswith("pipeline"):
        return "pipeline"
    return "spec"


def backoff(attempts: int, base: float = 0.5, cap: float = 60.0) -> float:
    """Seconds before retry number `attempts` (exponential, capped)."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


def requeue_interrupted(store: Store) -> int:
    """Put runs left `running` by a dead process back in the queue."""
    with store.session() as s:
        res = s.execute(
            update(Run)
            .where(Run.status == "running")
            .values(
                status="queued", error="interrupted: requeued after the process running it stopped"
            )
        )
        return int(res.rowcount or 0)  # type: ignore[attr-defined]


def enqueue(store: Store, changes: Iterable[ModelPlan], ids: dict[str, int], trigger: str) -> int:
    """Queue a run for each change unless one is already queued or running for it."""
    with store.session() as s:
        active = set(
            s.execute(select(Run.model_id, Run.fingerprint).where(Run.status.in_(ACTIVE))).tuples()
        )
        added = 0
        for mp in changes:
            key = (ids[mp.name], mp.fingerprint)
            if key in active:
                continue
            why = trigger_of(mp.reasons) if trigger == "auto" else trigger
            s.add(
                Run(
                    model_id=key[0],
                    fingerprint=mp.fingerprint,
                    version=mp.version,
                    tenant=mp.tenant,
                    status="queued",
                    trigger=why,
                    attempts=0,
                )
            )
            active.add(key)  # type: ignore[arg-type]
            added += 1
    return added


@dataclass(frozen=True)
class Claimed:
    run_id: int
    model: str
    fingerprint: str
    attempts: int
    tenant: str = DEFAULT
    weight: float = 1.0


def shares(ws: Workspace, store: Store | None = None) -> dict[str, Share]:
    """Every tenant's weight and run limits (the default tenant: weight 1, no limits)."""
    from modelworks.registry.tenants import tenants

    return {
        name: Share(t.weight, t.quotas.max_concurrent_runs, t.quotas.max_queued_runs)
        for name, t in tenants(ws, store).items()
    }


def scheduler(ws: Workspace, store: Store) -> tuple[FairShare, int | None]:
    """The policy an apply claims runs with, and how many it claims per round: all at once
    without tenants, a round of `round_size` with them (so a tenant's new runs join soon)."""
    found = shares(ws, store)
    return FairShare(found), round_size(ws.workers) if found else None


def round_size(workers: int) -> int:
    """How many runs one scheduling round claims: enough to keep the workers busy, few enough
    that runs queued meanwhile (another tenant's) are weighed in soon."""
    return max(64, 32 * workers)


def claim(
    store: Store,
    wanted: dict[str, str],
    policy: FairShare | None = None,
    budget: int | None = None,
) -> list[Claimed]:
    """Take due queued runs of the models in `wanted` (qualified name -> the fingerprint the
    spec asks for now): up to `budget` of them, chosen by `policy` (weighted fair share between
    tenants within their run limits). Runs for an older fingerprint are cancelled; runs left
    waiting get the reason in `Run.reason`."""
    policy = policy or FairShare()
    now = datetime.now(UTC)
    with store.session() as s:
        # Two controllers may share one registry: rows another one is claiming are skipped,
        # not claimed twice (PostgreSQL; SQLite has one writer at a time anyway).
        rows = s.execute(
            select(Run, Model.tenant, Model.name)
            .join(Model)
            .where(Run.status == "queued")
            .order_by(Run.id)
            .with_for_update(skip_locked=True, of=Run)
        ).all()
        queued = {run.model_id for run, _, _ in rows}
        done = set(
            s.execute(
                select(ModelVersion.model_id, ModelVersion.fingerprint).where(
                    ModelVersion.model_id.in_(queued)
                )
            ).tuples()
            if queued
            else ()
        )
        due: dict[int, tuple[Run, str]] = {}
        for run, tenant, bare in rows:
            name = qualified(tenant, bare)
            if _settle(run, name, wanted, done, now):
                due[run.id] = (run, name)
        running = dict(
            s.execute(
                select(Run.tenant, func.count()).where(Run.status == "running").group_by(Run.tenant)
            )
            .tuples()
            .all()
        )
        chosen = policy.select([(i, r.tenant) for i, (r, _) in due.items()], running, budget)
        for run_id, why in chosen.waiting.items():
            due[run_id][0].reason = why
        claimed = []
        for run_id in sorted(chosen.picked):
            run, name = due[run_id]
            run.status, run.attempts, run.started_at, run.reason = (
                "running",
                run.attempts + 1,
                now,
                None,
            )
            claimed.append(
                Claimed(
                    run.id, name, run.fingerprint, run.attempts, run.tenant, _weight(policy, run)
                )
            )
    return claimed


def _settle(
    run: Run, name: str, wanted: dict[str, str], done: set[tuple[int, str]], now: datetime
) -> bool:
    """Cancel a superseded run, close one whose version exists; True if it is due to start."""
    if name not in wanted:
        return False
    if wanted[name] != run.fingerprint:
        run.status, run.error, run.finished_at = "cancelled", "superseded by a newer spec", now
        run.reason = None
        return False
    if (run.model_id, run.fingerprint) in done:
        run.status, run.finished_at, run.reason = "succeeded", now, None
        return False
    return run.not_before is None or _aware(run.not_before) <= now


def _weight(policy: FairShare, run: Run) -> float:
    return policy.share(run.tenant).weight


def next_due(store: Store, wanted: dict[str, str]) -> float | None:
    """Seconds until the earliest queued run of `wanted` is due, or None when there is none."""
    with store.session() as s:
        rows = s.execute(
            select(Run.not_before, Run.fingerprint, Model.tenant, Model.name)
            .join(Model)
            .where(Run.status == "queued")
        ).all()
    times = [t for t, fp, tenant, name in rows if wanted.get(qualified(tenant, name)) == fp]
    if not times:
        return None
    now = datetime.now(UTC)
    return max(0.0, min(((_aware(t) - now).total_seconds() if t else 0.0) for t in times))


def retry_later(run: Run, error: str) -> None:
    """Send a failed attempt back to the queue with a backoff."""
    run.status, run.error = "queued", error
    run.not_before = datetime.now(UTC) + timedelta(seconds=backoff(run.attempts))


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
