"""Git is the source of truth: only committed specs, pipelines and pointers train (issue 9.4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelworks import _git
from modelworks.gitops import deploy as gdeploy
from modelworks.registry.queries import show
from modelworks.registry.store import Store
from modelworks.testing import commit_paths, mw, write_spec
from modelworks.workspace import Workspace

Capsys = pytest.CaptureFixture[str]


def apply_json(capsys: Capsys, ws: Workspace, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = mw(capsys, ws, "apply", "-j", "1", "--json", *args)
    assert "Traceback" not in err
    return code, json.loads(out)


def served(ws: Workspace, env: str, model: str) -> str | None:
    path = ws.root / "deploy" / env / model / "config.yaml"
    return yaml.safe_load(path.read_text())["version"] if path.exists() else None


def manifest_annotations(layout: str, ref: str) -> dict[str, str]:
    """The annotations of the manifest tagged `ref` in an OCI image layout folder."""
    index = json.loads((Path(layout) / "index.json").read_text())
    (digest,) = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    blob = Path(layout) / "blobs" / "sha256" / digest.split(":", 1)[1]
    return json.loads(blob.read_text()).get("annotations", {})  # type: ignore[no-any-return]


def edit_spec(ws: Workspace, name: str, c: float) -> Path:
    path = ws.models_dir / f"{name}.json"
    raw = json.loads(path.read_text())
    raw["model_hyperparameters"] = {"C": c}
    path.write_text(json.dumps(raw, indent=2))
    return path


def test_an_untracked_spec_is_refused_and_the_rest_of_the_fleet_trains(
    capsys: Capsys, fleet: Workspace
) -> None:
    write_spec(fleet, "extra", "data/set0/data.csv", commit=False)
    code, result = apply_json(capsys, fleet)
    assert code == 1
    assert [e["name"] for e in result["errors"]] == ["extra"]
    assert result["errors"][0]["error"] == (
        "models/extra.json: not committed (untracked); commit it or pass --allow-dirty"
    )
    assert sorted(t["name"] for t in result["trained"]) == ["model-0", "model-1", "model-2"]
    assert served(fleet, "test", "extra") is None


def test_a_modified_spec_and_an_untracked_pipeline_file_are_named_in_the_plan(
    capsys: Capsys, fleet: Workspace
) -> None:
    edit_spec(fleet, "model-0", 7.0)
    code, out, _ = mw(capsys, fleet, "plan", "--json")
    assert code == 1
    by_name = {m["name"]: m for m in json.loads(out)["models"]}
    assert by_name["model-0"]["action"] == "error"
    assert by_name["model-0"]["reasons"] == [
        "models/model-0.json: not committed (modified); commit it or pass --allow-dirty"
    ]
    assert by_name["model-1"]["action"] == "create"

    (fleet.pipelines_dir / "tiny" / "helper.py").write_text("X = 1\n")
    code, out, _ = mw(capsys, fleet, "plan")
    assert code == 1
    assert "pipelines/tiny/helper.py: not committed (untracked)" in out
    assert "Plan: 0 to create, 0 to update, 0 unchanged, 3 error(s)." in out


def test_allow_dirty_trains_marks_dirty_never_deploys_and_promote_refuses(
    capsys: Capsys, fleet: Workspace
) -> None:
    code, _ = apply_json(capsys, fleet)
    assert code == 0
    clean = served(fleet, "test", "model-0")
    edit_spec(fleet, "model-0", 9.0)

    code, result = apply_json(capsys, fleet, "--allow-dirty")
    assert code == 0
    (trained,) = result["trained"]
    assert (trained["name"], trained["dirty"]) == ("model-0", True)
    assert result["deployed"] == []
    assert served(fleet, "test", "model-0") == clean != trained["version"]

    store = Store(fleet.registry_url)
    info = show(store, "model-0")
    lineage = info["latest"]["lineage"]
    assert lineage["dirty"] is True
    assert lineage["spec_commit"] is None
    assert lineage["uncommitted"] == ["models/model-0.json: not committed (modified)"]
    art = info["artifact"]
    notes = manifest_annotations(art["oci_layout"], art["ref"])
    assert notes["dev.modelworks.dirty"] == "true"
    assert notes["dev.modelworks.spec.commit"] == ""

    # A rollback cannot put the dirty version anywhere, even where no approval is needed.
    head = _git.head(fleet.root)
    rb = ["rollback", "model-0", "--env", "test", "--to", trained["version"], "--as", "alice"]
    code, _, err = mw(capsys, fleet, *rb)
    assert code == 1
    assert "uncommitted inputs (dirty)" in err
    assert _git.head(fleet.root) == head

    # Put the dirty version into test by hand: promotion still refuses it.
    v = info["latest"]
    cfg = gdeploy.deploy_config(
        fleet, "model-0", "default", "sklearn", v["version"], v["fingerprint"],
        art["digest"], art["oci_layout"],
    )  # fmt: skip
    paths = gdeploy.write_configs(fleet.root, "test", [cfg])
    _git.commit(fleet.root, paths, "hand deploy")
    code, _, err = mw(capsys, fleet, "promote", "model-0", "--to", "prod", "--as", "alice")
    assert code == 1
    assert "trained from uncommitted inputs" in err
    assert "Traceback" not in err

    # Committing the same spec gives a clean version (a different fingerprint), deployed.
    commit_paths([fleet.models_dir / "model-0.json"], "C=9")
    code, result = apply_json(capsys, fleet)
    assert code == 0
    (again,) = result["trained"]
    assert again["version"] != trained["version"]
    assert "dirty" not in again
    assert served(fleet, "test", "model-0") == again["version"]


def test_lineage_commit_holds_exactly_the_trained_spec(capsys: Capsys, fleet: Workspace) -> None:
    edit_spec(fleet, "model-1", 3.0)
    dirty_bytes = (fleet.models_dir / "model-1.json").read_text()
    code, _ = apply_json(capsys, fleet, "--allow-dirty")
    assert code == 0
    # A commit after training must not change what lineage names.
    (fleet.root / "notes.txt").write_text("later\n")
    _git.commit(fleet.root, ["notes.txt"], "a later commit")
    store = Store(fleet.registry_url)
    for name in ("model-0", "model-2"):
        info = show(store, name)
        commit = info["latest"]["lineage"]["spec_commit"]
        assert commit is not None
        held = _git.git(fleet.root, "show", f"{commit}:models/{name}.json")
        assert held == (fleet.models_dir / f"{name}.json").read_text()
        notes = manifest_annotations(info["artifact"]["oci_layout"], info["artifact"]["ref"])
        assert notes["dev.modelworks.spec.commit"] == commit
    lineage = show(store, "model-1")["latest"]["lineage"]
    # No commit holds the trained bytes of model-1, so lineage says dirty instead of naming one.
    assert lineage["spec_commit"] is None
    assert lineage["dirty"] is True
    assert _git.show(fleet.root, "HEAD", "models/model-1.json") != dirty_bytes
