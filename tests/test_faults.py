"""Faults: SIGKILL in the middle of apply, two applies at once, the CLI's error rendering."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelworks.artifacts.oci import OCIStore
from modelworks.testing import slow_fleet, spawn_mw
from modelworks.workspace import Workspace


def _slow_fleet(ws: Workspace, n: int) -> None:
    slow_fleet(ws, n, sleep=0.15)


_mw = spawn_mw


def _versions(ws: Workspace) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(ws.state_dir / "registry.db")
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'model_versions'").fetchone():
            return []
        return db.execute(
            "SELECT m.name, v.fingerprint, v.status FROM model_versions v "
            "JOIN models m ON m.id = v.model_id"
        ).fetchall()
    finally:
        db.close()


def test_sigkill_mid_apply_then_apply_completes_the_fleet(workspace: Workspace) -> None:
    _slow_fleet(workspace, 24)
    proc = _mw(workspace, "apply", "--workers", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (workspace.state_dir / "registry.db").exists() and len(_versions(workspace)) >= 4:
            break
    assert proc.poll() is None, proc.communicate()
    os.killpg(
        proc.pid, signal.SIGKILL
    )  # the apply and its workers, as a kill -9 of the group would
    proc.wait()
    partial = len(_versions(workspace))
    assert 0 < partial < 24
    done = _mw(workspace, "apply", "--workers", "2", "--json")
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    result = json.loads(out)
    assert result["summary"]["trained"] == 24 - partial
    recovered = [
        line
        for line in (workspace.state_dir / "logs").rglob("*.log")
        if "recovered" in line.read_text()
    ]
    assert len(recovered) <= 2  # only runs killed between packaging and recording
    rows = _versions(workspace)
    assert len(rows) == 24
    assert len({(n, fp) for n, fp, _ in rows}) == 24
    assert {s for _, _, s in rows} == {"registered"}
    store = OCIStore(workspace.oci_dir)
    for name, fp, _ in rows:
        image = store.resolve(name, fp[:10])
        store.verify(image.digest)  # every registered artifact is complete
    runs = (
        sqlite3.connect(workspace.state_dir / "registry.db")
        .execute("SELECT status, attempts, error FROM runs")
        .fetchall()
    )
    # Runs the kill interrupted were requeued and finished by the second apply: none is lost,
    # none is left running, and each model has exactly one run that succeeded.
    assert {s for s, _, _ in runs} == {"succeeded"}
    assert len(runs) == 24
    requeued = [r for r in runs if r[1] > 1]
    assert len(requeued) == 24 - partial  # every run the kill left unfinished was taken up again
    deployed = list((workspace.root / "deploy" / "test").glob("*/config.yaml"))
    assert len(deployed) == 24


def test_two_applies_at_once_one_waits_or_refuses(workspace: Workspace) -> None:
    _slow_fleet(workspace, 8)
    first = _mw(workspace, "apply", "--workers", "1")
    time.sleep(1.5)  # let the first take the lock
    second = _mw(workspace, "apply")
    _out2, err2 = second.communicate(timeout=60)
    assert second.returncode == 3
    assert "another `mw apply` holds" in err2
    assert "--wait" in err2
    assert "Traceback" not in err2
    waiting = _mw(workspace, "apply", "--wait", "120", "--json")
    _out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    outw, errw = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, errw
    assert json.loads(outw)["summary"]["trained"] == 0
    rows = _versions(workspace)
    assert len(rows) == 8
    assert len({fp for _, fp, _ in rows}) == 8


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", "plan", "-C", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "no modelworks.yaml found" in proc.stderr
    assert "mw init" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_is_named(workspace: Workspace) -> None:
    (workspace.root / "modelworks.yaml").write_text("executor:\n  kind: spark\n")
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", "plan"],
        cwd=workspace.root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 78  # configuration (README: exit codes)
    assert "modelworks.yaml: field 'executor.kind'" in proc.stderr
    assert "spark" in proc.stderr


@pytest.mark.parametrize("flag", ["--json", None])
def test_plan_detailed_exitcode(workspace: Workspace, flag: str | None) -> None:
    _slow_fleet(workspace, 2)
    args = ["plan", "--detailed-exitcode"] + ([flag] if flag else [])
    changes = subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        cwd=workspace.root,
        capture_output=True,
        text=True,
    )
    assert changes.returncode == 2, changes.stderr
    if flag:
        doc = json.loads(changes.stdout)
        assert doc["summary"] == {"create": 2, "update": 0, "unchanged": 0, "error": 0}
        assert set(doc["models"][0]) == {
            "name",
            "tenant",
            "action",
            "reasons",
            "fingerprint",
            "version",
            "dirty",
        }
    subprocess.run(
        [sys.executable, "-m", "modelworks", "apply"],
        cwd=workspace.root,
        check=True,
        capture_output=True,
    )
    same = subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        cwd=workspace.root,
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0
    (workspace.models_dir / "broken.json").write_text("[]")
    broken = subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        cwd=workspace.root,
        capture_output=True,
        text=True,
    )
    assert broken.returncode == 1
