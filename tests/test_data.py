"""`mw data add`: DVC md5, cache layout, pointer files, spec bumps, commits."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from modelworks import _git
from modelworks.data.add import add
from modelworks.data.dvc import cache_path, read_pointer
from modelworks.errors import DataError
from modelworks.testing import write_dataset, write_spec
from modelworks.workspace import Workspace


def test_add_writes_dvc_layout_pointer_and_gitignore(workspace: Workspace) -> None:
    path = write_dataset(workspace, "data/churn/data.csv")
    v = add(workspace, path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert v.md5 == md5
    assert v.previous is None
    cached = workspace.cache_dir / "files" / "md5" / md5[:2] / md5[2:]
    assert cached == cache_path(workspace.cache_dir, md5)
    assert cached.read_bytes() == path.read_bytes()
    pointer = yaml.safe_load((path.parent / "data.csv.dvc").read_text())
    assert pointer == {
        "outs": [{"md5": md5, "size": path.stat().st_size, "hash": "md5", "path": "data.csv"}]
    }
    assert "/data.csv" in (path.parent / ".gitignore").read_text().splitlines()
    tracked = _git.git(workspace.root, "ls-files").split()
    assert "data/churn/data.csv.dvc" in tracked
    assert "data/churn/data.csv" not in tracked


def test_add_bumps_only_specs_of_that_dataset_and_commits(workspace: Workspace) -> None:
    a = write_dataset(workspace, "data/a/data.csv", seed=1)
    write_dataset(workspace, "data/b/data.csv", seed=2)
    write_spec(workspace, "uses-a", "data/a/data.csv")
    write_spec(workspace, "uses-a-yaml", "data/a/data.csv", fmt="yaml")
    write_spec(workspace, "uses-b", "data/b/data.csv")
    _git.commit(workspace.root, ["models"], "specs")
    v1 = add(workspace, a)
    assert sorted(v1.bumped) == ["models/uses-a-yaml.yaml", "models/uses-a.json"]
    spec_a = json.loads((workspace.models_dir / "uses-a.json").read_text())
    assert spec_a["data_source"]["dvc_hash"] == v1.md5
    assert (
        "dvc_hash"
        not in json.loads((workspace.models_dir / "uses-b.json").read_text())["data_source"]
    )
    assert (
        yaml.safe_load((workspace.models_dir / "uses-a-yaml.yaml").read_text())["data_source"][
            "dvc_hash"
        ]
        == v1.md5
    )
    assert _git.git(workspace.root, "status", "--porcelain", "models", "data/a").strip() == ""
    # A second version moves the hash and names the old one.
    a.write_text(a.read_text() + "0,0,0,0,1\n")
    v2 = add(workspace, a)
    assert v2.previous == v1.md5
    assert v2.md5 != v1.md5
    assert (
        json.loads((workspace.models_dir / "uses-a.json").read_text())["data_source"]["dvc_hash"]
        == v2.md5
    )
    assert f"{v1.md5[:8]} -> {v2.md5[:8]}" in _git.git(workspace.root, "log", "-1", "--format=%s")


def test_no_update_specs(workspace: Workspace) -> None:
    a = write_dataset(workspace, "data/a/data.csv")
    write_spec(workspace, "uses-a", "data/a/data.csv")
    v = add(workspace, a, update_specs=False)
    assert v.bumped == []
    assert (
        "dvc_hash"
        not in json.loads((workspace.models_dir / "uses-a.json").read_text())["data_source"]
    )


def test_add_refuses_missing_and_outside_files(workspace: Workspace, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="does not exist"):
        add(workspace, workspace.root / "data" / "nope.csv")
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="must be inside the workspace"):
        add(workspace, outside)


def test_bad_pointer_file_is_named(workspace: Workspace) -> None:
    bad = workspace.root / "data" / "x.csv.dvc"
    bad.write_text("outs: [{md5: 123}]\n")
    with pytest.raises(DataError, match=r"x\.csv\.dvc: field 'outs\[0\]\.md5'"):
        read_pointer(bad)
