"""Nothing escapes the workspace: names, pipelines, data paths, globs (issue 9, item 5)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelworks import _git
from modelworks.errors import ConfigError
from modelworks.testing import (
    TINY_PIPELINE,
    make_workspace,
    mw,
    small_fleet,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import CONFIG_FILE, Workspace, load_settings

Capsys = pytest.CaptureFixture[str]
SECRET = "s3cr3t-token-do-not-leak"


def apply_json(capsys: Capsys, ws: Workspace) -> tuple[int, dict[str, Any], str]:
    code, out, err = mw(capsys, ws, "apply", "-j", "1", "--json")
    assert "Traceback" not in err
    return code, json.loads(out), err


def local_spec(ws: Workspace, name: str, path: str) -> None:
    write_spec(ws, name, path, data_source={"type": "local", "path": path})


def bytes_in(folder: Path, needle: bytes) -> list[Path]:
    """Files under folder whose bytes contain needle (ModelCar layers are plain tar here)."""
    found = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            p = Path(dirpath) / f
            if needle in p.read_bytes():
                found.append(p)
    return found


def error_of(result: dict[str, Any], name: str) -> str:
    (err,) = [e["error"] for e in result["errors"] if e["name"] == name]
    return str(err)


def test_a_pipeline_outside_the_pipelines_folder_is_refused_and_never_imported(
    capsys: Capsys, fleet: Workspace, tmp_path: Path
) -> None:
    marker = tmp_path / "imported.marker"
    outside = tmp_path / "elsewhere" / "pl"
    outside.mkdir(parents=True)
    (outside / "version").write_text("v1\n")
    (outside / "pipeline.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n" + TINY_PIPELINE
    )
    write_spec(fleet, "escape", "data/set0/data.csv", pipeline="../../elsewhere/pl")
    (fleet.pipelines_dir / "linked").symlink_to(outside)  # a committed symlink, same code
    inner = write_pipeline(fleet, "inner", commit=False)
    (inner / "helper.py").symlink_to(outside / "pipeline.py")  # one file that leads outside
    _git.commit(fleet.root, ["pipelines"], "symlinked pipelines")
    write_spec(fleet, "linked", "data/set0/data.csv", pipeline="linked")
    write_spec(fleet, "inner-link", "data/set0/data.csv", pipeline="inner")

    code, result, _ = apply_json(capsys, fleet)
    assert code == 1
    assert "pipeline name '../../elsewhere/pl' is not valid" in error_of(result, "escape")
    assert "outside" in error_of(result, "linked")
    assert "outside" in error_of(result, "inner-link")
    assert sorted(t["name"] for t in result["trained"]) == ["model-0", "model-1", "model-2"]
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["absolute", "relative", "symlink"])
def test_local_data_outside_the_workspace_is_refused_without_showing_it(
    capsys: Capsys, fleet: Workspace, tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text(f"f0,label\n{SECRET},1\n")
    if kind == "absolute":
        path = "/etc/passwd"
        first_line = Path(path).read_text().splitlines()[0]
        needle = first_line.encode()
    elif kind == "relative":
        path, first_line, needle = "../outside/secret.csv", SECRET, SECRET.encode()
    else:
        (fleet.root / "data" / "link.csv").symlink_to(secret)
        _git.commit(fleet.root, ["data/link.csv"], "a link")
        path, first_line, needle = "data/link.csv", SECRET, SECRET.encode()
    local_spec(fleet, "thief", path)

    code, result, err = apply_json(capsys, fleet)
    assert code == 1
    message = error_of(result, "thief")
    assert "is outside the workspace" in message
    assert first_line not in message
    assert first_line not in err
    assert SECRET not in json.dumps(result)
    assert "thief" not in [t["name"] for t in result["trained"]]
    assert bytes_in(fleet.oci_dir, needle) == []
    assert bytes_in(fleet.state_dir / "work", needle) == []


def test_an_environment_named_dot_dot_is_a_config_error_and_writes_nothing(
    capsys: Capsys, fleet: Workspace, tmp_path: Path
) -> None:
    cfg = yaml.safe_load((fleet.root / CONFIG_FILE).read_text())
    cfg["environments"] = {"../../x": {"auto_deploy": True, "approvals": 0}}
    (fleet.root / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    _git.commit(fleet.root, [CONFIG_FILE], "a hostile environment")

    code, _out, err = mw(capsys, fleet, "apply", "-j", "1")
    assert code == 78  # configuration (README: exit codes)
    assert CONFIG_FILE in err
    assert "field 'environments': environment name '../../x' is not valid" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob("**/x/model-0"))


def test_a_tenant_key_that_is_not_a_name_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE
    path.write_text(yaml.safe_dump({"tenants": {"../acme": {}}}))
    with pytest.raises(ConfigError, match=r"field 'tenants': tenant name '../acme' is not valid"):
        load_settings(path)


def test_an_absolute_glob_outside_the_roots_is_refused_before_walking(
    capsys: Capsys, fleet: Workspace
) -> None:
    local_spec(fleet, "walker", "/usr/**")
    started = time.monotonic()
    code, out, _ = mw(capsys, fleet, "plan", "--json")
    assert time.monotonic() - started < 10
    assert code == 1
    (walker,) = [m for m in json.loads(out)["models"] if m["name"] == "walker"]
    assert walker["action"] == "error"
    assert "local data path '/usr' is outside the workspace" in walker["reasons"][0]


def test_a_glob_past_max_files_is_refused(capsys: Capsys, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", data={"max_files": 5})
    write_pipeline(ws)
    for i in range(8):
        write_dataset(ws, f"data/many/part{i}.csv", rows=20, seed=i)
    local_spec(ws, "greedy", "data/many/*.csv")
    code, out, _ = mw(capsys, ws, "plan", "--json")
    assert code == 1
    (greedy,) = json.loads(out)["models"]
    assert "'data/many/*.csv' matches more than 5 files" in greedy["reasons"][0]
    assert "data.max_files" in greedy["reasons"][0]


def test_a_configured_data_root_is_allowed(capsys: Capsys, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    ws = make_workspace(tmp_path / "ws", data={"roots": [str(shared)]})
    small_fleet(ws, models=1, datasets=1)
    write_dataset(ws, "../shared/table.csv", seed=3)
    local_spec(ws, "shared-model", str(shared / "table.csv"))
    local_spec(ws, "not-shared", str(tmp_path / "elsewhere.csv"))
    write_dataset(ws, "../elsewhere.csv", seed=4)

    code, result, _ = apply_json(capsys, ws)
    assert code == 1
    assert sorted(t["name"] for t in result["trained"]) == ["model-0", "shared-model"]
    assert "or data.roots" in error_of(result, "not-shared")


def test_a_symlinked_folder_to_outside_under_a_recursive_glob_is_refused_before_walking(
    capsys: Capsys, fleet: Workspace, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.csv").write_text(f"f0,label\n{SECRET},1\n")
    (fleet.root / "data" / "root-link").symlink_to("/")
    (fleet.root / "data" / "out-link").symlink_to(outside)
    local_spec(fleet, "roamer", "data/**/*.no-such-suffix")
    started = time.monotonic()
    code, out, _ = mw(capsys, fleet, "plan", "--json")
    assert time.monotonic() - started < 10
    assert code == 1
    (roamer,) = [m for m in json.loads(out)["models"] if m["name"] == "roamer"]
    assert "is outside the workspace" in roamer["reasons"][0]
    assert SECRET not in out


def test_a_spec_deploying_to_an_environment_that_is_not_a_name_is_refused(
    capsys: Capsys, fleet: Workspace
) -> None:
    write_spec(fleet, "wanderer", "data/set0/data.csv", deploy={"environments": ["../../x"]})
    code, out, _ = mw(capsys, fleet, "plan", "--json")
    assert code == 1
    (wanderer,) = [m for m in json.loads(out)["models"] if m["name"] == "wanderer"]
    assert wanderer["action"] == "error"
    assert "field 'deploy.environments.0'" in wanderer["reasons"][0]
