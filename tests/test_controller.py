"""The controller: commits, data folders, schedules, webhooks, graceful and hard stops.

Real git, real SQLite, the real worker pool; the stop tests run `mw controller` as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from modelworks import _git
from modelworks.apply import workspace_lock
from modelworks.controller import Controller
from modelworks.controller.webhook import create_app, sign
from modelworks.data.add import add
from modelworks.errors import ConfigError
from modelworks.registry import audit
from modelworks.registry.queries import runs, show
from modelworks.registry.store import Store
from modelworks.testing import (
    TINY_PIPELINE,
    make_workspace,
    slow_fleet,
    small_fleet,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import Workspace

SECRET = "s3cret-for-tests"


def _controller(ws: Workspace, **kw: Any) -> Controller:
    return Controller(ws, Store(ws.registry_url), workers=2, lock_wait=0.2, **kw)


def _edit_spec(ws: Workspace, name: str, **changes: Any) -> None:
    path = ws.models_dir / f"{name}.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw, indent=2))
    _git.commit(ws.root, [path.relative_to(ws.root)], f"edit {name}")


def _runs(ws: Workspace) -> list[dict[str, Any]]:
    return runs(Store(ws.registry_url), limit=1000)


def test_first_tick_applies_all_then_a_spec_commit_applies_only_that_model(
    fleet: Workspace,
) -> None:
    reconciles: list[int] = []
    ctl = _controller(fleet, on_deploy=[lambda: reconciles.append(1)])
    first = ctl.tick()
    assert first.errors == []
    assert first.applied[0]["names"] is None
    assert first.applied[0]["trained"] == 3
    assert first.applied[0]["deployed"] == 3
    assert reconciles == [1]
    assert ctl.tick().changes == []  # the line's own deploy commit needs no second pass
    (fleet.root / "deploy" / "README.md").write_text("what each environment serves\n")
    _git.commit(fleet.root, ["deploy/README.md"], "deploy: readme")
    moved = ctl.tick()  # a deploy-only commit reconciles serving and trains nothing
    assert moved.applied == []
    assert [c["parts"] for c in moved.changes] == [["deploy"]]
    assert moved.reconciled
    assert len(reconciles) == 2

    _edit_spec(fleet, "model-1", model_hyperparameters={"C": 9.0})
    t = ctl.tick()
    assert t.applied[0]["names"] == ["model-1"]
    assert (t.applied[0]["trained"], t.applied[0]["deployed"]) == (1, 1)
    assert [r["trigger"] for r in _runs(fleet)][:1] == ["spec"]
    state = json.loads((fleet.state_dir / "controller" / "state.json").read_text())
    assert state["repos"]["workspace"] == _git.head(fleet.root)
    again = _controller(
        fleet
    ).tick()  # a restarted controller re-plans once (to finish any queue) ...
    assert again.applied[0]["trained"] == 0
    assert again.applied[0]["skipped"] == 3
    assert again.changes == []  # ... and remembers the commits it reconciled


def test_a_users_apply_holding_the_lock_delays_the_controller_without_deadlock(
    workspace: Workspace,
) -> None:
    fleet = workspace
    small_fleet(fleet, models=1, datasets=1)
    ctl = _controller(fleet)
    lock = workspace_lock(fleet, 0)
    try:
        t = ctl.tick()
    finally:
        lock.release()
    assert t.applied == []
    assert "another `mw apply` holds" in t.errors[0]
    assert "workspace" not in ctl.state.repos  # not reconciled: the next tick tries again
    t2 = ctl.tick()
    assert t2.errors == []
    assert t2.applied[0]["trained"] == 1


def test_a_file_dropped_in_a_watched_folder_is_versioned_and_retrains_its_models(
    tmp_path: Path,
) -> None:
    ws = make_workspace(tmp_path / "ws", data={"watch": ["data/set0"]})
    small_fleet(ws)
    ctl = _controller(ws)
    assert ctl.tick().applied[0]["trained"] == 3
    new = write_dataset(ws, "data/set0/data.csv", seed=42)
    extra = write_dataset(ws, "data/set0/extra.csv", seed=5)
    old = time.time() - 5
    for p in (new, extra):
        os.utime(p, (old, old))
    t = ctl.tick()
    assert t.errors == []
    assert t.data is not None
    assert sorted(f["dataset"] for f in t.data["files"]) == [
        "data/set0/data.csv",
        "data/set0/extra.csv",
    ]
    show = _git.git(ws.root, "show", "--stat", "--format=%s", t.data["commit"])
    assert show.startswith("data: 2 new file version(s)")
    for changed in ("data.csv.dvc", "extra.csv.dvc", "model-0.json", "model-2.json"):
        assert changed in show  # pointers and the bumped specs in one commit
    assert (t.applied[0]["trained"], t.applied[0]["skipped"]) == (2, 1)
    assert {r["model"] for r in _runs(ws) if r["trigger"] == "data"} == {"model-0", "model-2"}
    assert ctl.tick().data is None  # versioned files are not taken again


def test_a_separate_deploy_repo_is_watched_and_a_watch_folder_outside_is_refused(
    tmp_path: Path,
) -> None:
    deploy = tmp_path / "deploy-repo"
    _git.init(deploy)
    (deploy / "README.md").write_text("deploy repository\n")
    _git.commit(deploy, ["README.md"], "init")
    ws = make_workspace(tmp_path / "ws", paths={"deploy": str(deploy)})
    small_fleet(ws, models=1, datasets=1)
    reconciles: list[int] = []
    ctl = _controller(ws, on_deploy=[lambda: reconciles.append(1)])
    assert ctl.tick().applied[0]["deployed"] == 1
    assert (deploy / "deploy" / "test" / "model-0" / "config.yaml").exists()
    assert set(ctl.state.repos) == {"workspace", f"repo:{deploy.resolve()}"}
    assert ctl.tick().changes == []
    (deploy / "NOTES.md").write_text("not a deploy config\n")
    _git.commit(deploy, ["NOTES.md"], "notes")
    assert ctl.tick().changes[0]["parts"] == []  # outside deploy/: nothing to reconcile
    (deploy / "deploy" / "test" / "README.md").write_text("test serves these\n")
    _git.commit(deploy, ["deploy/test/README.md"], "readme")
    moved = ctl.tick()
    assert moved.changes[0]["parts"] == ["deploy"]
    assert moved.reconciled
    assert len(reconciles) == 2

    outside = make_workspace(tmp_path / "ws2", data={"watch": ["../elsewhere"]})
    with pytest.raises(ConfigError, match=r"'\.\./elsewhere' is outside the workspace"):
        _controller(outside)


def test_a_data_repo_given_by_url_is_checked_each_tick_and_its_new_commit_retrains(
    tmp_path: Path,
) -> None:
    from modelworks.data.dvc import file_md5, store, write_pointer

    remote, data_repo = tmp_path / "remote", tmp_path / "data-repo"
    _git.init(data_repo)

    def publish(seed: int) -> str:
        scratch = make_workspace(tmp_path / f"scratch{seed}")
        csv = write_dataset(scratch, "x.csv", seed=seed)
        md5 = file_md5(csv)
        store(remote, csv, md5)
        (data_repo / "sets").mkdir(exist_ok=True)
        write_pointer(data_repo / "sets" / "x.csv.dvc", md5, csv.stat().st_size, "x.csv")
        _git.commit(data_repo, ["sets"], f"x.csv {md5[:8]}")
        return md5

    first = publish(1)
    ws = make_workspace(tmp_path / "ws", data={"remote": str(remote)})
    write_pipeline(ws)
    url = f"file://{data_repo}"
    write_spec(
        ws,
        "remote-data",
        "sets/x.csv",
        data_source={"type": "dvc", "dataset": "sets/x.csv", "repo_url": url},
    )
    _git.commit(ws.root, ["models", "pipelines"], "a model on a remote data repo")
    ctl = _controller(ws)
    t = ctl.tick()
    assert t.applied[0]["trained"] == 1
    assert ctl.state.repos[f"url:{url}"] == _git.head(data_repo)
    assert ctl.tick().changes == []
    second = publish(2)
    moved = ctl.tick()
    assert [c["repo"] for c in moved.changes] == [f"url:{url}"]
    assert moved.applied[0]["trained"] == 1
    (run,) = [r for r in _runs(ws) if r["trigger"] == "data"]
    assert run["model"] == "remote-data"
    hashes = [
        v["lineage"]["data_hash"] for v in show(Store(ws.registry_url), "remote-data")["versions"]
    ]
    assert hashes == [second, first]


def test_schedule_retrains_on_the_newest_data_and_records_a_noop_when_nothing_is_newer(
    fleet: Workspace,
) -> None:
    path = fleet.models_dir / "model-0.json"
    raw = json.loads(path.read_text())
    pinned = raw["data_source"]["dvc_hash"]
    raw["schedule"] = "*/5 * * * *"
    path.write_text(json.dumps(raw, indent=2))
    _git.commit(fleet.root, ["models"], "schedule model-0")
    ctl = _controller(fleet)
    ctl.tick()
    assert "model-0" in ctl.state.schedules  # a new schedule starts counting now

    write_dataset(fleet, "data/set0/data.csv", seed=11)  # a new data version, specs not bumped
    v = add(fleet, fleet.root / "data/set0/data.csv", update_specs=False)
    assert ctl.tick().applied[0]["trained"] == 0  # pinned specs stay on their data version
    ctl.state.schedules["model-0"] = (datetime.now(UTC) - timedelta(minutes=6)).isoformat()
    t = ctl.tick()
    assert t.scheduled == ["model-0"]
    assert t.applied[-1]["trigger"] == "schedule"
    assert t.applied[-1]["trained"] == 1
    assert json.loads(path.read_text())["data_source"]["dvc_hash"] == v.md5 != pinned
    assert _git.git(fleet.root, "log", "-1", "--format=%s", "--", "models/model-0.json").startswith(
        "schedule: retrain 1 model(s) on the newest data"
    )
    latest = _runs(fleet)[0]
    assert (latest["model"], latest["trigger"], latest["status"]) == (
        "model-0",
        "schedule",
        "succeeded",
    )

    ctl.state.schedules["model-0"] = (datetime.now(UTC) - timedelta(minutes=6)).isoformat()
    again = ctl.tick()
    assert again.applied[-1]["trained"] == 0
    assert [n["name"] for n in again.noops] == ["model-0"]
    noop = _runs(fleet)[0]
    assert (noop["trigger"], noop["status"], noop["attempts"]) == ("schedule", "succeeded", 0)
    assert "nothing was trained" in Path(noop["log_path"]).read_text()
    events = audit.rows(Store(fleet.registry_url), action="retrain.schedule")
    assert events[-1]["after"]["result"] == "unchanged"


def test_failed_and_stuck_jobs_retry_with_backoff_then_stay_failed(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", executor={"timeout": 1.0, "retries": 1})
    stuck = TINY_PIPELINE.replace(
        "def train(data, params):", "def train(data, params):\n    import time; time.sleep(60)"
    )
    write_pipeline(ws, source=stuck)
    write_dataset(ws, "data/d/data.csv")
    write_spec(ws, "stuck", "data/d/data.csv")
    add(ws, ws.root / "data/d/data.csv", commit=False)
    _git.commit(ws.root, ["models", "pipelines", "data"], "a stuck model")
    t0 = time.monotonic()
    t = _controller(ws).tick()
    assert time.monotonic() - t0 < 20
    assert t.applied[0]["failed"] == 1
    (run,) = _runs(ws)
    assert (run["status"], run["attempts"]) == ("failed", 2)  # the first try and one retry
    assert "timed out after 1s" in run["error"]


# -- webhook ------------------------------------------------------------------------------------


class _Client:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> _Client:
        self._cm = start_blocking_portal()
        self.portal = self._cm.__enter__()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://ctl"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.portal.call(self.http.aclose)
        finally:
            self._cm.__exit__(None, None, None)

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.portal.call(lambda: self.http.request(method, url, **kw))


def test_webhook_signature_refuses_and_logs_bad_requests_and_a_good_one_reconciles_now(
    tmp_path: Path,
) -> None:
    ws = make_workspace(tmp_path / "ws", controller={"webhook_secret": SECRET})
    small_fleet(ws, models=1, datasets=1)
    ctl = _controller(ws)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    loop = threading.Thread(target=ctl.run, args=(300.0,), daemon=True)
    loop.start()
    try:
        _wait(lambda: ctl.ticks >= 1, 60)
        with _Client(create_app(ctl)) as c:
            missing = c.request("POST", "/hooks/git", content=body)
            wrong = c.request(
                "POST",
                "/hooks/git",
                content=body,
                headers={"X-Hub-Signature-256": sign("not-the-secret", body)},
            )
            assert (missing.status_code, wrong.status_code) == (401, 403)
            # counted, not audited: an unsigned caller cannot grow the audit log
            assert audit.rows(Store(ws.registry_url), action="webhook.refused") == []
            assert 'mw_http_refused_requests_total{reason="signature"} 2.0' in (
                c.request("GET", "/metrics").text
            )
            assert ctl.ticks == 1  # refused requests do not wake the controller

            _edit_spec(ws, "model-0", model_hyperparameters={"C": 3.0})
            ok = c.request(
                "POST",
                "/hooks/git",
                content=body,
                headers={"X-Hub-Signature-256": sign(SECRET, body), "X-GitHub-Event": "push"},
            )
            assert ok.status_code == 202
            assert ok.json() == {"accepted": True, "event": "push"}
            _wait(
                lambda: (
                    ctl.last is not None
                    and any(a["names"] == ["model-0"] for a in ctl.last.applied)
                ),
                60,
            )
            assert c.request("GET", "/healthz").json()["ok"] is True
            status = c.request("GET", "/api/status").json()
            assert status["controller"]["ticks"] >= 2
            assert [m["name"] for m in status["models"]] == ["model-0"]
    finally:
        ctl.stop()
        loop.join(60)
    assert not loop.is_alive()


def test_webhook_without_a_configured_secret_refuses_everything(fleet: Workspace) -> None:
    ctl = _controller(fleet)
    body = b"{}"
    with _Client(create_app(ctl)) as c:
        r = c.request(
            "POST", "/hooks/git", content=body, headers={"X-Hub-Signature-256": sign("", body)}
        )
    assert r.status_code == 403
    assert "webhook_secret is not configured" in r.json()["error"]


def _wait(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# -- stops: SIGKILL and SIGTERM of a real `mw controller` -----------------------------------------


def _slow_fleet(ws: Workspace, n: int) -> None:
    slow_fleet(ws, n, sleep=0.4)


def _start(ws: Workspace) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelworks",
            "controller",
            "--interval",
            "0.5",
            "--no-http",
            "-j",
            "1",
        ],
        cwd=ws.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _rows(ws: Workspace, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(ws.state_dir / "registry.db")
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return []
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _registered(ws: Workspace) -> int:
    return len(_rows(ws, "SELECT id FROM model_versions"))


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.slow
def test_sigkill_then_sigterm_then_restart_finishes_the_queue_with_no_job_lost_or_run_twice(
    workspace: Workspace,
) -> None:
    n = 10
    _slow_fleet(workspace, n)
    procs = []
    try:
        first = _start(workspace)
        procs.append(first)
        _wait(lambda: _registered(workspace) >= 2, 90)
        os.killpg(
            first.pid, signal.SIGKILL
        )  # the controller and its workers, like kill -9 of the group
        first.communicate(timeout=30)
        killed_at = _registered(workspace)
        assert killed_at < n
        # the kill left claimed runs 'running': the next controller puts them back in the queue
        assert _rows(workspace, "SELECT status FROM runs WHERE status IN ('queued', 'running')")
        attempts_before = dict(_rows(workspace, "SELECT id, attempts FROM runs"))

        second = _start(workspace)
        procs.append(second)
        _wait(lambda: _registered(workspace) >= killed_at + 2, 90)
        second.send_signal(signal.SIGTERM)  # graceful: the running job finishes
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "Traceback" not in err
        assert _rows(workspace, "SELECT id FROM runs WHERE status = 'running'") == []
        stopped_at = _registered(workspace)
        assert stopped_at < n
        requeued = _rows(
            workspace,
            "SELECT id, attempts FROM runs WHERE status = 'queued' "
            "AND error LIKE 'requeued: the controller stopped%'",
        )
        assert requeued  # claimed but not started when SIGTERM came: back in the queue, ...
        assert all(a == attempts_before[i] for i, a in requeued)  # ... this attempt not counted

        third = _start(workspace)
        procs.append(third)
        _wait(
            lambda: (
                _registered(workspace) == n
                and not _rows(
                    workspace, "SELECT id FROM runs WHERE status IN ('queued', 'running')"
                )
            ),
            120,
        )
        third.send_signal(signal.SIGTERM)
        third.communicate(timeout=60)
        assert third.returncode == 0
    finally:
        for p in procs:
            _kill(p)
    per_model = _rows(
        workspace, "SELECT m.name, r.status FROM runs r JOIN models m ON m.id = r.model_id"
    )
    assert sorted(name for name, status in per_model if status == "succeeded") == [
        f"m{i:02d}" for i in range(n)
    ]
    assert {status for _, status in per_model} == {"succeeded"}
    versions = _rows(workspace, "SELECT model_id, fingerprint FROM model_versions")
    assert len(versions) == len(set(versions)) == n
    assert len(list((workspace.root / "deploy" / "test").glob("*/config.yaml"))) == n


@pytest.mark.slow
def test_a_second_sigterm_stops_hard_and_requeues_the_killed_run(
    workspace: Workspace, tmp_path: Path
) -> None:
    marker = tmp_path / "training"
    stuck = TINY_PIPELINE.replace(
        "def train(data, params):",
        "def train(data, params):\n"
        f"    open({str(marker)!r}, 'w').close()\n    import time; time.sleep(120)",
    )
    write_pipeline(workspace, source=stuck)
    write_dataset(workspace, "data/d/data.csv")
    write_spec(workspace, "slow", "data/d/data.csv")
    add(workspace, workspace.root / "data/d/data.csv", commit=False)
    _git.commit(workspace.root, ["models", "pipelines", "data"], "one slow model")
    proc = _start(workspace)
    try:
        _wait(marker.exists, 60)  # the worker is inside train()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 15
    finally:
        _kill(proc)
    assert proc.returncode == 0, err
    assert "stopping now" in err, err
    assert "Traceback" not in err, err
    ((status, error),) = _rows(workspace, "SELECT status, error FROM runs")
    assert status == "queued", err
    assert error.startswith("interrupted: the controller was stopped hard"), err
    assert _session_members(proc.pid) == []


# -- mw up ----------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_members(sid: int) -> list[int]:
    """Live processes in session `sid` (start_new_session makes the child its leader)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def test_mw_up_trains_deploys_serves_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    ctl_port, serve_port, api_port = _free_port(), _free_port(), _free_port()
    ws = make_workspace(
        tmp_path / "ws",
        controller={"port": ctl_port},
        serving={"port": serve_port, "poll_interval": 120},
        server={"port": api_port},
    )
    small_fleet(ws, models=2, datasets=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelworks", "up", "--interval", "60", "-j", "2"],
        cwd=ws.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base, ctl = f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{ctl_port}"
    try:
        _wait(lambda: _get(f"{ctl}/healthz") == 200 and _get(f"{base}/v2/health/live") == 200, 60)
        # The controller's first pass trains and deploys; it then tells the server to reload
        # (the server's own Git poll is 120 s away), so the model is ready within the pass.
        _wait(lambda: _get(f"{base}/v2/models/model-0/ready") == 200, 90)
        body = {
            "inputs": [
                {"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [0.5, 1, 0, 0]}
            ]
        }
        r = httpx.post(f"{base}/v2/models/model-0/infer", json=body, timeout=30)
        assert r.status_code == 200
        assert r.json()["outputs"][0]["data"] == [1]
        status = httpx.get(f"{ctl}/api/status", timeout=30).json()
        assert {m["name"]: m["deployed"] for m in status["models"]}["model-0"]["test"]
        api = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/models", timeout=30).json()
        assert [m["name"] for m in api["items"]] == ["model-0", "model-1"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        _kill(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"serve:test     http://127.0.0.1:{serve_port}" in out
    assert f"api            http://127.0.0.1:{api_port}" in out
    assert "mw up: stopped" in out
    assert _session_members(proc.pid) == []  # no worker or server left behind


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
