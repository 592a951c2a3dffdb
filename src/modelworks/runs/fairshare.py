"""Weighted fair share of the workers between tenants, FIFO within a tenant (pure, no I/O).

Each tenant has a virtual clock: the jobs it started, divided by its weight. The next job
comes from the backlogged tenant with the earliest clock (ties: the oldest head job), so
with weights 1 and 2 tenant B starts two jobs for each of A's. A tenant that was idle
joins at the earliest clock among the busy ones: it gets its share from now on, not a
burst that makes up for the time it had nothing queued. A tenant alone takes every worker.

    A queued a1..a6 at t0, B queued b1 b2 a moment later, weights 1/1, 2 workers:
    start order  a1 b1 a2 b2 a3 a4 a5 a6      (FIFO would be a1..a6 b1 b2)

A tenant at `max_concurrent_runs` is skipped until one of its runs ends; its jobs wait,
never fail. `max_queued_runs` bounds how many of a tenant's runs count as its queue: the
ones behind them wait for a place (the reason says so).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
Job = dict[str, Any]
DEFAULT = "default"


@dataclass(frozen=True)
class Share:
    """A tenant's claim on the workers: its weight and run limits (None: no limit)."""

    weight: float = 1.0
    max_concurrent_runs: int | None = None
    max_queued_runs: int | None = None


@dataclass
class Selection(Generic[K]):
    """The jobs to start now, in start order, and why each of the others waits."""

    picked: list[K] = field(default_factory=list)
    waiting: dict[K, str] = field(default_factory=dict)


class FairShare:
    """Picks the next jobs by weighted fair share; keeps the tenants' clocks between calls."""

    # Arrival order across tenants instead (limits still hold): the baseline fair share beats.
    fifo: bool = False

    def __init__(
        self, shares: Mapping[str, Share] | None = None, *, fifo: bool | None = None
    ) -> None:
        self.shares = dict(shares or {})
        self.clock: dict[str, float] = {}
        if fifo is not None:
            self.fifo = fifo

    def share(self, tenant: str) -> Share:
        return self.shares.get(tenant) or Share()

    def select(
        self,
        queued: Sequence[tuple[K, str]],
        running: Mapping[str, int] | None = None,
        budget: int | None = None,
    ) -> Selection[K]:
        """Up to `budget` jobs (None: all that may start) from `queued` (key, tenant) in
        arrival order, given each tenant's running count; the rest get a reason."""
        busy: dict[str, int] = defaultdict(int, running or {})
        lines = _lines(queued)
        self._activate(set(lines) | {t for t, n in busy.items() if n > 0})
        out: Selection[K] = Selection()
        arrival = {key: i for i, (key, _) in enumerate(queued)}
        while budget is None or len(out.picked) < budget:
            tenant = self._next(lines, busy, arrival)
            if tenant is None:
                break
            out.picked.append(lines[tenant].popleft())
            busy[tenant] += 1
            self.clock[tenant] += 1.0 / self.share(tenant).weight
            if not lines[tenant]:
                del lines[tenant]
        out.waiting = self._reasons(lines, busy, competing=len(lines) > 1)
        return out

    def _activate(self, backlogged: set[str]) -> None:
        """Forget idle tenants; one that joins starts at the earliest busy clock."""
        for t in [t for t in self.clock if t not in backlogged]:
            del self.clock[t]
        start = min(self.clock.values(), default=0.0)
        for t in sorted(backlogged - set(self.clock)):
            self.clock[t] = start

    def _next(
        self, lines: Mapping[str, deque[K]], busy: Mapping[str, int], arrival: Mapping[K, int]
    ) -> str | None:
        """The tenant to start a job of: the earliest clock, ties to the oldest head job."""
        ready = [t for t in lines if not self._at_limit(t, busy)]
        if not ready:
            return None
        if self.fifo:
            return min(ready, key=lambda t: arrival[lines[t][0]])
        return min(ready, key=lambda t: (self.clock[t], arrival[lines[t][0]]))

    def _at_limit(self, tenant: str, busy: Mapping[str, int]) -> bool:
        cap = self.share(tenant).max_concurrent_runs
        return cap is not None and busy.get(tenant, 0) >= cap

    def _reasons(
        self, lines: Mapping[str, deque[K]], busy: Mapping[str, int], competing: bool
    ) -> dict[K, str]:
        why: dict[K, str] = {}
        rivals = ", ".join(f"{t} weight {self.share(t).weight:g}" for t in sorted(lines))
        for tenant, jobs in lines.items():
            share = self.share(tenant)
            for i, key in enumerate(jobs):
                if share.max_queued_runs is not None and i >= share.max_queued_runs:
                    why[key] = (
                        f"waiting: {tenant} has {share.max_queued_runs} queued "
                        f"(max_queued_runs {share.max_queued_runs})"
                    )
                elif self._at_limit(tenant, busy):
                    why[key] = (
                        f"waiting: {tenant} has {busy[tenant]} running "
                        f"(max_concurrent_runs {share.max_concurrent_runs})"
                    )
                elif competing:
                    why[key] = f"waiting: fair share ({rivals})"
                else:
                    why[key] = "waiting: for a free worker"
        return why


def _lines(queued: Sequence[tuple[K, str]]) -> dict[str, deque[K]]:
    """Each tenant's jobs in arrival order; tenants in the order of their oldest job."""
    lines: dict[str, deque[K]] = {}
    for key, tenant in queued:
        lines.setdefault(tenant, deque()).append(key)
    return lines


class Dispatcher:
    """An executor's pending jobs, handed out one at a time by fair share of the tenants
    (a job's `tenant` and `weight` fields; untagged jobs share the default tenant)."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        shares = {_tenant(j): Share(weight=float(j.get("weight") or 1.0)) for j in jobs}
        self.policy = FairShare(shares)
        self.lines: dict[str, deque[Job]] = defaultdict(deque)
        for j in jobs:
            self.lines[_tenant(j)].append(j)

    def __len__(self) -> int:
        return sum(len(q) for q in self.lines.values())

    def __bool__(self) -> bool:
        return len(self) > 0

    def take(self, running: Sequence[Job] = ()) -> Job | None:
        """The next job to start, given the jobs running now; None when nothing is left."""
        busy: dict[str, int] = defaultdict(int)
        for j in running:
            busy[_tenant(j)] += 1
        heads = [(t, t) for t, q in self.lines.items() if q]
        picked = self.policy.select(heads, busy, budget=1).picked
        if not picked:
            return None
        line = self.lines[picked[0]]
        job = line.popleft()
        if not line:
            del self.lines[picked[0]]
        return job


def _tenant(job: Job) -> str:
    return str(job.get("tenant") or DEFAULT)
