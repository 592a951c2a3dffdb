"""The fair-share policy (runs/fairshare.py): weights, limits, FIFO per tenant, reasons."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from modelworks.runs.fairshare import Dispatcher, FairShare, Share


def _queue(**counts: int) -> list[tuple[str, str]]:
    """Jobs a1..aN then b1..bM (arrival order), as (key, tenant)."""
    return [(f"{t}{i}", t) for t, n in counts.items() for i in range(1, n + 1)]


def test_a_latecomer_is_interleaved_not_queued_behind_the_flood() -> None:
    picked = FairShare().select(_queue(a=6, b=2)).picked
    assert picked == ["a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6"]


def test_fifo_baseline_keeps_arrival_order_across_tenants() -> None:
    picked = FairShare(fifo=True).select(_queue(a=3, b=2)).picked
    assert picked == ["a1", "a2", "a3", "b1", "b2"]


def test_weights_share_the_starts() -> None:
    policy = FairShare({"a": Share(weight=1), "b": Share(weight=2)})
    picked = policy.select(_queue(a=30, b=30), budget=30).picked
    counts = Counter(k[0] for k in picked)
    assert counts == {"a": 10, "b": 20}


def test_a_tenant_alone_uses_every_worker() -> None:
    sel = FairShare().select(_queue(a=5), budget=3)
    assert sel.picked == ["a1", "a2", "a3"]
    assert sel.waiting == {"a4": "waiting: for a free worker", "a5": "waiting: for a free worker"}


def test_max_concurrent_runs_holds_the_rest_with_a_reason() -> None:
    policy = FairShare({"acme": Share(max_concurrent_runs=4)})
    queued = [(i, "acme") for i in range(10)]
    sel = policy.select(queued, running={"acme": 1})
    assert sel.picked == [0, 1, 2]
    assert sel.waiting[3] == "waiting: acme has 4 running (max_concurrent_runs 4)"
    assert set(sel.waiting) == set(range(3, 10))
    assert policy.select(queued[3:], running={"acme": 4}).picked == []


def test_a_limited_tenant_leaves_the_workers_to_the_others() -> None:
    policy = FairShare({"a": Share(max_concurrent_runs=1)})
    sel = policy.select(_queue(a=3, b=3), budget=4)
    assert sel.picked == ["a1", "b1", "b2", "b3"]
    assert sel.waiting["a2"] == "waiting: a has 1 running (max_concurrent_runs 1)"


def test_fair_share_reason_names_the_tenants_and_weights() -> None:
    policy = FairShare({"acme": Share(weight=1), "globex": Share(weight=2)})
    queued = [(1, "acme"), (2, "acme"), (3, "globex"), (4, "globex")]
    sel = policy.select(queued, budget=1)
    assert sel.waiting[2] == "waiting: fair share (acme weight 1, globex weight 2)"


def test_max_queued_runs_reason_for_runs_past_the_queue() -> None:
    policy = FairShare({"acme": Share(max_queued_runs=2, max_concurrent_runs=1)})
    sel = policy.select([(i, "acme") for i in range(4)])
    assert sel.picked == [0]
    assert sel.waiting[1] == "waiting: acme has 1 running (max_concurrent_runs 1)"
    assert sel.waiting[2] == sel.waiting[1]
    # Two runs wait in acme's queue; the one behind them waits for a place in it.
    assert sel.waiting[3] == "waiting: acme has 2 queued (max_queued_runs 2)"


def test_clocks_carry_over_between_rounds() -> None:
    policy = FairShare()
    first = policy.select(_queue(a=4), budget=2).picked
    # b joins at a's clock: it gets its share from now on, not a burst for the time it idled.
    second = policy.select([("a3", "a"), ("a4", "a"), ("b1", "b"), ("b2", "b")], {"a": 2}, 2)
    assert first == ["a1", "a2"]
    assert second.picked == ["a3", "b1"]


def test_running_jobs_count_for_a_tenant_joining() -> None:
    policy = FairShare()
    policy.select(_queue(a=2), budget=2)
    # a idles (nothing queued or running): its clock is forgotten, b does not owe it anything.
    assert policy.select([("b1", "b")]).picked == ["b1"]
    assert set(policy.clock) == {"b"}


def test_dispatcher_hands_out_by_tenant_given_the_running_jobs() -> None:
    jobs = [{"run_id": i, "tenant": "a"} for i in range(4)] + [
        {"run_id": 10 + i, "tenant": "b", "weight": 1} for i in range(2)
    ]
    d = Dispatcher(jobs)
    first = d.take([])
    second = d.take([first] if first else [])
    assert first is not None
    assert second is not None
    assert (first["run_id"], second["run_id"]) == (0, 10)
    order = [first["run_id"], second["run_id"]]
    while d:
        job = d.take([])
        assert job is not None
        order.append(job["run_id"])
    assert order == [0, 10, 1, 11, 2, 3]
    assert d.take([]) is None


_tenants = st.sampled_from(["a", "b", "c"])
_shares = st.dictionaries(
    _tenants,
    st.builds(
        Share,
        weight=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
        max_concurrent_runs=st.none() | st.integers(1, 5),
        max_queued_runs=st.none() | st.integers(1, 10),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    tenants=st.lists(_tenants, max_size=40),
    shares=_shares,
    running=st.dictionaries(_tenants, st.integers(0, 6)),
    budget=st.none() | st.integers(0, 12),
)
def test_select_invariants(
    tenants: list[str], shares: dict[str, Share], running: dict[str, int], budget: int | None
) -> None:
    queued = list(enumerate(tenants))
    sel = FairShare(shares).select(queued, running, budget)
    picked = sel.picked
    # Every queued job is either picked or waits with a reason; none twice.
    assert sorted(picked + list(sel.waiting)) == list(range(len(tenants)))
    assert all(why.startswith("waiting: ") for why in sel.waiting.values())
    if budget is not None:
        assert len(picked) <= budget
    started = Counter(tenants[i] for i in picked)
    for t, n in started.items():
        cap = shares.get(t, Share()).max_concurrent_runs
        if cap is not None:
            assert running.get(t, 0) + n <= cap  # never over a tenant's run limit
        mine = [i for i, tt in enumerate(tenants) if tt == t]
        assert sorted(i for i in picked if tenants[i] == t) == mine[:n]  # FIFO per tenant
    # Work-conserving: with budget to spare, a job waits only because its tenant is at its limit.
    if budget is None or len(picked) < budget:
        for i in sel.waiting:
            t = tenants[i]
            cap = shares.get(t, Share()).max_concurrent_runs
            assert cap is not None
            assert running.get(t, 0) + started[t] >= cap


@settings(max_examples=200, deadline=None)
@given(
    weights=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    rounds=st.integers(1, 60),
)
def test_backlogged_tenants_get_starts_in_proportion_to_weight(
    weights: tuple[int, int], rounds: int
) -> None:
    wa, wb = weights
    policy = FairShare({"a": Share(weight=wa), "b": Share(weight=wb)})
    queued = _queue(a=200, b=200)
    picked = policy.select(queued, budget=rounds).picked
    n = Counter(k[0] for k in picked)
    # Each tenant's starts/weight stay within one job of the other's (virtual-time fairness).
    assert abs(n["a"] / wa - n["b"] / wb) <= 1.0 + 1e-9
