"""The registry on SQLite and PostgreSQL: migrations, plan/apply, audit chain, two controllers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from modelworks.apply import apply
from modelworks.plan import plan
from modelworks.registry import audit
from modelworks.registry.models import AuditEvent, Model, ModelVersion, Run
from modelworks.registry.store import HEAD_REVISION, Store, current_revision
from modelworks.runs.executor import LocalExecutor
from modelworks.testing import make_workspace, small_fleet, write_pipeline
from modelworks.workspace import Workspace

# train() waits (up to 3 s) for a second process to reach it, so both applies overlap.
BARRIER_PIPELINE = """\
import os, time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression


def prepare(data_path, params):
    table = np.loadtxt(data_path, delimiter=",", skiprows=1, ndmin=2)
    X, y = table[:, :-1], table[:, -1].astype(int)
    return {"X_train": X[:150], "y_train": y[:150], "X_test": X[150:], "y_test": y[150:]}


def train(data, params):
    barrier = Path(os.environ["MW_TEST_BARRIER"])
    mine = barrier / str(os.getpid())
    if not mine.exists():  # only the first model of each process waits
        mine.touch()
        deadline = time.monotonic() + 3
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    model = LogisticRegression(C=params.get("C", 1.0), max_iter=200)
    return model.fit(data["X_train"], data["y_train"])


def evaluate(model, data):
    return {"accuracy": float((model.predict(data["X_test"]) == data["y_test"]).mean())}
"""


def test_migrations_reach_head(registry_url: str) -> None:
    store = Store(registry_url)
    try:
        assert current_revision(store.engine) == HEAD_REVISION
        tables = set(inspect(store.engine).get_table_names())
        assert {"models", "model_versions", "runs", "audit_events", "alembic_version"} <= tables
        Store(registry_url).close()  # opening again at head is a no-op
        assert current_revision(store.engine) == HEAD_REVISION
    finally:
        store.close()


def test_plan_and_apply_on_each_backend(tmp_path: Path, registry_url: str) -> None:
    ws = make_workspace(tmp_path / "ws", registry={"url": registry_url})
    small_fleet(ws)
    assert ws.registry_url == registry_url
    store = Store(ws.registry_url)
    try:
        assert plan(ws, store).summary["create"] == 3
        result = apply(ws, store, executor=LocalExecutor(1))
        assert result.ok
        assert len(result.trained) == 3
        assert plan(ws, store).summary == {"create": 0, "update": 0, "unchanged": 3, "error": 0}
        with store.session() as s:
            v = s.scalars(select(ModelVersion).order_by(ModelVersion.id)).first()
            run = s.scalars(select(Run).order_by(Run.id)).first()
        assert v is not None
        assert run is not None
        # JSON round-trips as JSON; timestamps come back as the instants written (UTC).
        assert v.inputs["spec"]["hyperparameters"] == {"C": 1.0}
        assert v.metrics["accuracy"] == pytest.approx(result.trained[0]["metrics"]["accuracy"])
        assert run.finished_at is not None
        assert run.started_at is not None
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - started).total_seconds()) < 300
    finally:
        store.close()


def test_audit_chain_on_each_backend(registry_url: str) -> None:
    store = Store(registry_url)
    try:
        audit.record(
            store,
            [
                audit.event("model.created", "m1", actor="alice", after={"x": [1, 2]}),
                audit.event(
                    "deployment",
                    "m1",
                    actor="bob",
                    tenant="t1",
                    before={"v": None},
                    after={"v": "abc"},
                ),
            ],
        )
        audit.record(store, [audit.event("model.deleted", "m1", actor="alice")])
        assert audit.verify(store) == []
        actions = [r["action"] for r in audit.rows(store)]
        assert actions == ["model.created", "deployment", "model.deleted"]
        with store.session() as s:
            s.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
        problems = audit.verify(store)
        assert [(p.seq, p.kind) for p in problems] == [(2, "edited")]
    finally:
        store.close()


@pytest.mark.postgres
def test_two_controllers_sharing_postgres_never_register_twice(tmp_path: Path, pg_url: str) -> None:
    first = make_workspace(tmp_path / "a", registry={"url": pg_url}, executor={"workers": 1})
    small_fleet(first, models=3)
    write_pipeline(first, source=BARRIER_PIPELINE)
    from modelworks import _git

    _git.commit(first.root, ["pipelines"], "a pipeline that waits for the other controller")
    # The second controller: a copy of the repository and its data cache, as on another machine.
    shutil.copytree(first.root, tmp_path / "b")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "MW_TEST_BARRIER": str(barrier)}
    procs = [
        subprocess.Popen(
            ["mw", "apply", "--json", "-C", str(tmp_path / d)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in ("a", "b")
    ]
    outs = [p.communicate(timeout=120) for p in procs]

    assert list(barrier.iterdir()), outs  # at least one trained (two, if both claimed runs)
    for p, (out, err) in zip(procs, outs, strict=True):
        assert "Traceback" not in err, err
        assert p.returncode == 0, (out, err)
    reports = [json.loads(out) for out, _ in outs]
    assert sum(len(r["trained"]) for r in reports) >= 3
    store = Store(pg_url)
    try:
        with store.session() as s:
            dupes = s.execute(
                select(ModelVersion.model_id, ModelVersion.fingerprint, func.count()).group_by(
                    ModelVersion.model_id, ModelVersion.fingerprint
                )
            ).all()
            statuses = set(s.scalars(select(Run.status)))
            models = s.scalar(select(func.count()).select_from(Model))
            events = s.scalar(select(func.count()).select_from(AuditEvent))
        assert models == 3
        assert sorted(n for *_, n in dupes) == [1, 1, 1]
        assert "running" not in statuses
        assert "failed" not in statuses
        assert events
        assert audit.verify(store) == []
        for root in ("a", "b"):  # and each controller now sees the fleet as done
            ws = Workspace.load(tmp_path / root)
            assert plan(ws, store).summary["unchanged"] == 3
    finally:
        store.close()


@pytest.mark.postgres
def test_claim_skips_runs_another_controller_is_claiming(tmp_path: Path, pg_url: str) -> None:
    import threading

    from modelworks.runs import queue

    ws = make_workspace(tmp_path / "ws", registry={"url": pg_url})
    small_fleet(ws)
    store = Store(pg_url)
    try:
        changes = plan(ws, store).changes
        with store.session() as s:
            s.add_all(Model(name=m.name) for m in changes)
        with store.session() as s:
            ids = dict(s.execute(select(Model.name, Model.id)).tuples().all())
        assert queue.enqueue(store, changes, ids, "manual") == 3
        wanted = {m.name: str(m.fingerprint) for m in changes}
        got: list[list[queue.Claimed]] = []
        with store.engine.connect() as other:  # another controller, mid-claim
            tx = other.begin()
            other.execute(text("SELECT id FROM runs WHERE status = 'queued' FOR UPDATE"))
            worker = threading.Thread(target=lambda: got.append(queue.claim(store, wanted)))
            worker.start()
            worker.join(10)
            blocked = worker.is_alive()
            tx.rollback()
            worker.join(10)
        assert not blocked, "claim waited for another controller's locked runs"
        assert got == [[]]
        assert sorted(c.model for c in queue.claim(store, wanted)) == sorted(wanted)
    finally:
        store.close()
