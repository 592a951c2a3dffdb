"""Monitoring: real served traffic through the real inference app, drift reports in the registry,
gauges on /metrics, and the controller retraining on drift only where the spec says so."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from modelworks import _git
from modelworks.controller import Controller
from modelworks.data.add import add
from modelworks.errors import NotFoundError
from modelworks.monitor.run import monitor, read_scores, scores_path
from modelworks.registry.models import DriftReportRow
from modelworks.registry.queries import runs
from modelworks.registry.store import Store
from modelworks.serving import create_app
from modelworks.testing import AppClient, write_dataset
from modelworks.workspace import Workspace


def _monitored_fleet(ws: Workspace) -> Controller:
    """model-0 retrains on drift, model-1 only alerts; trained and deployed by the controller."""
    from modelworks.testing import small_fleet

    small_fleet(ws)
    for name, action in (("model-0", "retrain"), ("model-1", "alert")):
        path = ws.models_dir / f"{name}.json"
        raw = json.loads(path.read_text())
        raw["monitoring"] = {
            "metric": "psi",
            "threshold": 0.25,
            "min_samples": 200,
            "action": action,
        }
        path.write_text(json.dumps(raw, indent=2))
    _git.commit(ws.root, ["models"], "monitoring")
    ctl = Controller(ws, Store(ws.registry_url), workers=2, lock_wait=1)
    first = ctl.tick()
    assert first.errors == []
    assert first.applied[0]["deployed"] == 3
    return ctl


def _serve(ws: Workspace, batches: dict[str, np.ndarray]) -> str:
    """Send each model its rows as 10 requests, flush the log; return the /metrics text."""
    app = create_app(ws, "test", sample_rate=1.0, reconcile_in_background=False)
    with AppClient(app) as c:
        for model, x in batches.items():
            for chunk in np.array_split(x, 10):
                r = c.infer(model, chunk)
                assert r.status_code == 200, r.text
        app.state.sampler.flush()
        monitor(ws, Store(ws.registry_url), "test")
        return c.get("/metrics").text


def test_served_traffic_without_drift_is_quiet_and_with_drift_retrains_only_where_asked(
    workspace: Workspace,
) -> None:
    ws = workspace
    ctl = _monitored_fleet(ws)
    store = Store(ws.registry_url)
    rng = np.random.default_rng(1)
    same = {m: rng.normal(size=(400, 4)) for m in ("model-0", "model-1")}
    metrics = _serve(ws, same)
    reports = {r.model: r for r in monitor(ws, store, "test", record=False)}
    assert not reports["model-0"].drifted
    assert not reports["model-1"].drifted
    assert reports["model-0"].samples == 400
    assert reports["model-0"].score < 0.25
    assert {f["name"] for f in reports["model-0"].features} == {"f0", "f1", "f2", "f3"}
    assert all(f["ks_pvalue"] is not None for f in reports["model-0"].features)
    assert reports["model-2"].samples == 0
    assert "need 100" in (reports["model-2"].reason or "")
    assert 'mw_drift_detected{model="model-0"' in metrics
    quiet = ctl.tick()
    assert quiet.drift == []
    assert quiet.applied == []
    assert not [
        r for r in runs(store, limit=100) if r["trigger"] == "drift"
    ]  # no drift, no retrain

    write_dataset(ws, "data/set0/data.csv", seed=9)  # newer data waits in the repo, specs pinned
    newest = add(ws, ws.root / "data/set0/data.csv", update_specs=False).md5
    assert ctl.tick().applied[0]["trained"] == 0
    shifted = {m: rng.normal(loc=2.5, size=(400, 4)) for m in ("model-0", "model-1")}
    metrics = _serve(ws, shifted)
    with store.session() as s:
        rows = s.scalars(select(DriftReportRow).order_by(DriftReportRow.id)).all()
        last = {r.model_id: r for r in rows}
    drifted = sorted((r.action, r.report["retrain_requested"]) for r in last.values() if r.drifted)
    assert drifted == [("alert", False), ("retrain", True)]
    scores = read_scores(scores_path(ws, "test"))
    assert scores["model-0"]["drifted"]
    assert scores["model-0"]["score"] >= 0.25
    served = scores["model-0"]["version"]
    assert (
        f'mw_drift_detected{{model="model-0",tenant="default",version="{served}"}} 1.0' in metrics
    )
    assert 'mw_drift_detected{model="model-1"' in metrics

    # The running controller acts on the request; its own monitoring pass runs in a thread.
    ctl.monitor_interval = 0.2
    loop = threading.Thread(target=ctl.run, args=(300.0,), daemon=True)
    loop.start()
    try:
        _wait(
            lambda: ("drift", "succeeded") in {(r["trigger"], r["status"]) for r in runs(store)}, 60
        )
        _wait(lambda: _report_count(store) > len(rows), 60)
    finally:
        ctl.stop()
        loop.join(60)
    assert not loop.is_alive()
    assert ctl.last is not None
    assert ctl.last.errors == []
    spec = json.loads((ws.models_dir / "model-0.json").read_text())
    assert spec["data_source"]["dvc_hash"] == newest  # retrained on the newest data version
    drift_runs = [r for r in runs(store, limit=100) if r["trigger"] == "drift"]
    assert [(r["model"], r["status"]) for r in drift_runs] == [("model-0", "succeeded")]
    assert ctl.tick().drift == []  # one request per drifted version, acted on once


def _report_count(store: Store) -> int:
    with store.session() as s:
        return len(s.scalars(select(DriftReportRow.id)).all())


def _wait(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_monitor_cli_json_and_exit_code(workspace: Workspace) -> None:
    fleet_ws = workspace
    _monitored_fleet(fleet_ws)
    rng = np.random.default_rng(3)
    _serve(fleet_ws, {"model-1": rng.normal(loc=3.0, size=(300, 4))})
    out = subprocess.run(
        [sys.executable, "-m", "modelworks", "monitor", "model-1", "--env", "test", "--json"],
        cwd=fleet_ws.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr  # drift found
    doc = json.loads(out.stdout)
    (m,) = doc["models"]
    assert (m["model"], m["drifted"], m["action"], m["retrain_requested"]) == (
        "model-1",
        True,
        "alert",
        False,
    )
    assert m["samples"] == 300
    assert m["score"] >= 0.25
    with pytest.raises(NotFoundError, match="not deployed in test: nope"):
        monitor(fleet_ws, Store(fleet_ws.registry_url), "test", ["nope"])
    bad = subprocess.run(
        [sys.executable, "-m", "modelworks", "monitor", "--env", "staging"],
        cwd=fleet_ws.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "environment 'staging' is not in modelworks.yaml" in bad.stderr
    assert "Traceback" not in bad.stderr
