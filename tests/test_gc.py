"""`mw gc`: a real trained fleet, real crash leftovers, real removal; deployed and registered
images survive and still verify."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from modelworks.artifacts.oci import OCIStore
from modelworks.testing import deploy_iris, mw, write_spec
from modelworks.workspace import Workspace

OLD = time.time() - 7200  # older than gc.min_age (3600 s) and than every run


def _age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (OLD, OLD), follow_symlinks=False)


def _versions(ws: Workspace) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(ws.state_dir / "registry.db")
    try:
        return db.execute(
            "SELECT m.name, v.version, v.artifact_digest FROM model_versions v "
            "JOIN models m ON m.id = v.model_id WHERE v.status = 'registered'"
        ).fetchall()
    finally:
        db.close()


def _leftovers(ws: Workspace) -> dict[str, Path]:
    """What crashed writers leave: an orphan image, a stray blob, a work folder, temp files."""
    oci = OCIStore(ws.oci_dir)
    stray = oci.blob_path(oci.put_blob(b"an unreferenced blob " * 100))
    build = ws.state_dir / "build-orphan"
    build.mkdir()
    (build / "model.bin").write_bytes(b"a model nobody registered " * 50)
    image = oci.write_image("model-0", "0123456789", build, {})
    manifest = json.loads(oci.blob_path(image.digest).read_bytes())
    orphan_blobs = [oci.blob_path(image.digest), oci.blob_path(manifest["layers"][-1]["digest"])]
    work = ws.state_dir / "work" / "0abc123def-x1y2z3"
    (work / "models").mkdir(parents=True)
    (work / "models" / "model.skops").write_bytes(b"half a model" * 100)
    cache_tmp = ws.cache_dir / "files" / "md5" / "ab" / ".tmp-killed"
    cache_tmp.parent.mkdir(parents=True, exist_ok=True)
    cache_tmp.write_bytes(b"x" * 4096)
    oci_tmp = oci.blobs_dir / ".tmp-killed"
    oci_tmp.write_bytes(b"y" * 2048)
    # Everything in the store is old, so only references protect what must stay.
    _age(*oci.blobs_dir.iterdir(), work, cache_tmp, oci_tmp)
    return {
        "stray": stray,
        "orphan_manifest": orphan_blobs[0],
        "orphan_layer": orphan_blobs[1],
        "work": work,
        "cache_tmp": cache_tmp,
        "oci_tmp": oci_tmp,
    }


@pytest.fixture
def trained(fleet: Workspace, capsys: pytest.CaptureFixture[str]) -> Workspace:
    """Three models trained and deployed, model-0 retrained (its first version registered but
    no longer deployed), and iris deployed from an image with no registry row."""
    code, _, err = mw(capsys, fleet, "apply")
    assert code == 0, err
    write_spec(fleet, "model-0", "data/set0/data.csv", model_hyperparameters={"C": 9.0})
    code, _, err = mw(capsys, fleet, "apply")
    assert code == 0, err
    deploy_iris(fleet, env="edge")  # an env of its own: `mw verify --env test` needs rows
    return fleet


def test_gc_removes_leftovers_keeps_deployed_and_registered(
    capsys: pytest.CaptureFixture[str], trained: Workspace
) -> None:
    ws = trained
    versions = _versions(ws)
    assert len(versions) == 4  # model-0 twice
    junk = _leftovers(ws)

    code, out, err = mw(capsys, ws, "gc", "--dry-run", "--json")
    assert code == 0, err
    planned = json.loads(out)
    assert planned["dry_run"] is True
    listed = {item["path"] for item in planned["removed"]}
    for name, path in junk.items():
        assert ws.show(path) in listed, name
        assert path.exists(), f"--dry-run removed {name}"
    images = [i["path"] for i in planned["removed"] if i["kind"] == "image"]
    assert len(images) == 1
    assert "model-0:0123456789" in images[0]
    assert planned["bytes"] >= 4096 + 2048 + 1200

    code, out, err = mw(capsys, ws, "gc")
    assert code == 0, err
    assert f"freed {planned['bytes']} bytes" in " ".join(out.split())
    for name, path in junk.items():
        assert not path.exists(), f"gc kept {name}"
    oci = OCIStore(ws.oci_dir)
    assert "0123456789" not in oci.tags("model-0")

    for name, version, digest in versions:
        oci.verify(digest)
        code, out, err = mw(capsys, ws, "verify", f"{name}@{version}")
        assert code == 0, (name, version, err)
        assert "verified" in out
    code, _, err = mw(capsys, ws, "verify", "--env", "test")
    assert code == 0, err
    oci.verify(oci.resolve("modelworks/iris", "1").digest)

    from modelworks.gitops.deploy import read_env
    from modelworks.serving.loader import ModelLoader

    loader = ModelLoader(ws)
    served = [
        *read_env(ws.deploy_repo, "test").values(),
        *read_env(ws.deploy_repo, "edge").values(),
    ]
    assert len(served) == 4
    for cfg in served:
        loader.load(cfg)  # extracted from the store, signature checked, loaded

    code, out, err = mw(capsys, ws, "gc", "--json")
    assert code == 0, err
    again: dict[str, Any] = json.loads(out)
    assert again["removed"] == []
    assert again["bytes"] == 0


def test_gc_keeps_fresh_files_and_images_newer_than_the_newest_run(
    capsys: pytest.CaptureFixture[str], fleet: Workspace
) -> None:
    code, _, err = mw(capsys, fleet, "apply")
    assert code == 0, err
    oci = OCIStore(fleet.oci_dir)
    build = fleet.state_dir / "build-recoverable"
    build.mkdir()
    (build / "model.bin").write_bytes(b"packaged, then killed before recording")
    image = oci.write_image("model-1", "feedbeef00", build, {})
    fresh_tmp = fleet.cache_dir / ".tmp-in-progress"
    fresh_tmp.write_bytes(b"z")
    code, out, err = mw(capsys, fleet, "gc", "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == []
    assert oci.tags("model-1")["feedbeef00"] == image.digest
    assert fresh_tmp.exists()


def test_controller_collects_on_its_schedule(tmp_path: Path) -> None:
    from modelworks.controller.loop import Controller
    from modelworks.registry.store import Store
    from modelworks.testing import make_workspace, small_fleet

    ws = make_workspace(tmp_path / "ws", gc={"interval": 0.001})
    small_fleet(ws)
    ctl = Controller(ws, Store(ws.registry_url), workers=2, lock_wait=0.2)
    first = ctl.tick()
    assert first.errors == []
    assert first.applied
    assert first.applied[0]["trained"] == 3
    work = ws.state_dir / "work" / "0abc123def-killed"
    work.mkdir(parents=True)
    (work / "partial.bin").write_bytes(b"p" * 1000)
    temp = ws.cache_dir / ".tmp-killed"
    temp.write_bytes(b"t" * 500)
    _age(work, temp)
    time.sleep(0.01)
    second = ctl.tick()
    assert second.errors == []
    assert second.gc == {"removed": 2, "bytes": 1500}
    assert not work.exists()
    assert not temp.exists()
    for name, version, _digest in _versions(ws):
        OCIStore(ws.oci_dir).verify(OCIStore(ws.oci_dir).resolve(name, version).digest)


def test_gc_refuses_while_a_deployment_cannot_be_read(
    capsys: pytest.CaptureFixture[str], fleet: Workspace
) -> None:
    from modelworks import _git

    # A trained fleet: with deployments and no registry, every command refuses (lost registry).
    assert mw(capsys, fleet, "apply")[0] == 0
    bad = fleet.root / "deploy" / "test" / "model-0" / "config.yaml"
    bad.write_text("artifact_digest: [unclosed\n")
    _git.commit(fleet.root, ["deploy"], "a hand-edited config")
    temp = fleet.cache_dir / ".tmp-killed"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"t")
    _age(temp)
    code, _, err = mw(capsys, fleet, "gc")
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "deploy/test/model-0/config.yaml: not valid YAML" in lines[0]
    assert temp.exists()  # nothing removed
