"""A lost registry is refused, `mw fsck` reports disagreements, `--repair` rebuilds the fleet."""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelworks import _git
from modelworks.testing import mw
from modelworks.workspace import Workspace


def _db(ws: Workspace) -> Path:
    return ws.state_dir / "registry.db"


def _drop_sidecars(ws: Workspace) -> None:
    for side in ("registry.db-wal", "registry.db-shm"):
        (ws.state_dir / side).unlink(missing_ok=True)


def _versions(ws: Workspace) -> dict[str, tuple[str, str]]:
    conn = sqlite3.connect(_db(ws))
    try:
        rows = conn.execute(
            "SELECT m.name, v.version, v.artifact_digest FROM model_versions v "
            "JOIN models m ON m.id = v.model_id WHERE v.status = 'registered'"
        ).fetchall()
    finally:
        conn.close()
    return {name: (version, digest) for name, version, digest in rows}


@pytest.fixture
def trained(fleet: Workspace, capsys: Any) -> Workspace:
    """The small fleet, applied: three registered versions, deployed to test and committed."""
    code, _out, err = mw(capsys, fleet, "apply", "--json")
    assert code == 0, err
    gc.collect()  # close the in-process apply's SQLite connections, as its process exit would
    return fleet


@pytest.mark.parametrize("loss", ["truncated", "deleted"])
def test_apply_refuses_a_lost_registry_and_writes_nothing(
    trained: Workspace, capsys: Any, loss: str
) -> None:
    head = _git.head(trained.root)
    images = sorted(p.name for p in (trained.oci_dir / "blobs" / "sha256").iterdir())
    _drop_sidecars(trained)
    if loss == "truncated":
        _db(trained).write_bytes(b"")
    else:
        _db(trained).unlink()
    code, out, err = mw(capsys, trained, "apply")
    assert code != 0
    assert str(_db(trained)) in err
    assert "deployment config(s) in Git" in err
    assert "image(s) in the OCI store" in err
    assert "mw fsck --repair" in err
    assert "Traceback" not in err
    assert "trained" not in out
    # nothing written: no registry created or filled, no commit, no new image
    assert not _db(trained).exists() or _db(trained).stat().st_size == 0
    assert _git.head(trained.root) == head
    assert sorted(p.name for p in (trained.oci_dir / "blobs" / "sha256").iterdir()) == images
    code, _out, err = mw(capsys, trained, "status")
    assert code != 0
    assert "mw fsck --repair" in err


def test_a_new_workspace_still_opens_a_new_registry(fleet: Workspace, capsys: Any) -> None:
    assert not _db(fleet).exists()
    code, out, err = mw(capsys, fleet, "plan", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["create"] == 3


def test_fsck_on_a_consistent_workspace_exits_0(trained: Workspace, capsys: Any) -> None:
    code, out, err = mw(capsys, trained, "fsck", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True
    assert report["problems"] == []


def test_fsck_names_a_version_whose_image_files_were_deleted(
    trained: Workspace, capsys: Any
) -> None:
    name, (version, digest) = sorted(_versions(trained).items())[0]
    manifest = json.loads((trained.oci_dir / "blobs" / "sha256" / digest[7:]).read_bytes())
    (trained.oci_dir / "blobs" / "sha256" / manifest["layers"][-1]["digest"][7:]).unlink()
    code, out, _err = mw(capsys, trained, "fsck", "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert [(p["kind"], p["model"]) for p in problems] == [("image-missing", name)]
    assert version in problems[0]["detail"]
    assert "is missing" in problems[0]["detail"]


def test_fsck_names_an_image_and_a_deployment_without_registry_row(
    trained: Workspace, capsys: Any
) -> None:
    name, (version, _digest) = sorted(_versions(trained).items())[-1]
    conn = sqlite3.connect(_db(trained))
    with conn:
        conn.execute(
            "DELETE FROM model_versions WHERE model_id = (SELECT id FROM models WHERE name = ?)",
            (name,),
        )
    conn.close()
    code, out, _err = mw(capsys, trained, "fsck")
    assert code == 1
    assert "image-unregistered" in out
    assert f"{name}:{version}" in out
    assert "git-unregistered" in out
    assert f"deploy/test/{name}/config.yaml" in out


def test_fsck_names_a_deployment_row_git_does_not_show(trained: Workspace, capsys: Any) -> None:
    name = sorted(_versions(trained))[0]
    _git.git(trained.root, "rm", "-q", f"deploy/test/{name}/config.yaml")
    _git.git(trained.root, "commit", "-q", "-m", "undeploy by hand")
    code, out, _err = mw(capsys, trained, "fsck", "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert [(p["kind"], p["model"]) for p in problems] == [("deployment-not-in-git", name)]


def test_fsck_reports_a_lost_registry_without_creating_it(trained: Workspace, capsys: Any) -> None:
    _drop_sidecars(trained)
    _db(trained).unlink()
    code, out, _err = mw(capsys, trained, "fsck", "--json")
    assert code == 1
    kinds = {p["kind"] for p in json.loads(out)["problems"]}
    assert {"registry-missing", "image-unregistered", "git-unregistered"} <= kinds
    assert not _db(trained).exists()


def test_repair_rebuilds_the_fleet_so_nothing_retrains(trained: Workspace, capsys: Any) -> None:
    before = _versions(trained)
    assert len(before) == 3
    _drop_sidecars(trained)
    _db(trained).write_bytes(b"")
    code, out, err = mw(capsys, trained, "fsck", "--repair", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["repaired"]["models"] == 3
    assert report["repaired"]["versions"] == 3
    assert report["repaired"]["deployments"] == 3
    assert any(item.startswith("runs") for item in report["lost"])
    assert any("approvals" in item for item in report["lost"])
    assert _versions(trained) == before
    code, out, err = mw(capsys, trained, "plan", "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["create"] == 0
    assert summary["update"] == 0
    assert summary["unchanged"] == 3
    code, out, err = mw(capsys, trained, "status", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert {n: r["version"] for n, r in rows.items()} == {n: v for n, (v, _) in before.items()}
    assert all(r["status"] == "registered" and r["deployed"]["test"] for r in rows.values())
    head = _git.head(trained.root)
    code, out, err = mw(capsys, trained, "apply", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["trained"] == 0
    assert _git.head(trained.root) == head
    code, out, _err = mw(capsys, trained, "fsck")
    assert code == 0, out
    code, out, err = mw(capsys, trained, "verify", sorted(before)[0], "--json")
    assert code == 0, out + err


def test_repair_of_a_deleted_version_row_adds_it_back(trained: Workspace, capsys: Any) -> None:
    before = _versions(trained)
    name = sorted(before)[0]
    conn = sqlite3.connect(_db(trained))
    with conn:
        conn.execute(
            "DELETE FROM model_versions WHERE model_id = (SELECT id FROM models WHERE name = ?)",
            (name,),
        )
    conn.close()
    code, out, err = mw(capsys, trained, "fsck", "--repair", "--json")
    assert code == 0, out + err
    assert json.loads(out)["repaired"]["versions"] == 1
    assert json.loads(out)["lost"] == []
    assert _versions(trained) == before


def test_repair_after_a_lost_store_reports_what_remains(trained: Workspace, capsys: Any) -> None:
    _drop_sidecars(trained)
    _db(trained).unlink()
    shutil.rmtree(trained.oci_dir)
    code, out, _err = mw(capsys, trained, "fsck", "--repair", "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert {p["kind"] for p in problems} == {"git-unregistered"}


def test_repair_rebuilds_promotions_from_merge_commits(trained: Workspace, capsys: Any) -> None:
    name = sorted(_versions(trained))[0]
    code, _out, err = mw(capsys, trained, "promote", name, "--to", "prod", "--as", "alice")
    assert code == 0, err
    code, _out, err = mw(capsys, trained, "approve", "1", "--as", "bob")
    assert code == 0, err
    gc.collect()
    _drop_sidecars(trained)
    _db(trained).write_bytes(b"")
    code, out, err = mw(capsys, trained, "fsck", "--repair", "--json")
    assert code == 0, out + err
    code, out, err = mw(capsys, trained, "status", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert rows[name]["deployed"]["prod"] == _versions(trained)[name][0]
    conn = sqlite3.connect(_db(trained))
    kinds = conn.execute("SELECT kind FROM deployments WHERE env = 'prod'").fetchall()
    conn.close()
    assert kinds == [("promote",)]


def test_a_registry_recreated_by_another_command_is_still_refused(
    trained: Workspace, capsys: Any
) -> None:
    head = _git.head(trained.root)
    _drop_sidecars(trained)
    _db(trained).unlink()
    code, _out, err = mw(capsys, trained, "user", "add", "carol")  # recreates the file
    assert code == 0, err
    assert _db(trained).stat().st_size > 0
    code, out, err = mw(capsys, trained, "apply", "--json")
    assert code != 0
    assert "empty (no model versions)" in err
    assert "mw fsck --repair" in err
    assert out == ""
    assert _git.head(trained.root) == head
    code, out, err = mw(capsys, trained, "fsck", "--repair", "--json")
    assert code == 0, out + err
    code, out, err = mw(capsys, trained, "plan", "--json")
    assert code == 0, err
    assert json.loads(out)["summary"]["unchanged"] == 3
