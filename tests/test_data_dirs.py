"""Directory datasets: DVC 3 `.dir` manifests, with the real `dvc` on both sides."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from s3_server import s3_server  # noqa: F401  (pytest fixture)

from modelworks import _git
from modelworks.data.add import add
from modelworks.data.dirs import manifest_bytes, materialize, read_manifest
from modelworks.data.dvc import cache_path, read_pointer
from modelworks.errors import DataError
from modelworks.spec import SpecError, parse_spec
from modelworks.testing import (
    make_workspace,
    mw,
    mw_json,
    write_dataset,
    write_pipeline,
    write_spec,
)
from modelworks.workspace import Workspace

DVC = shutil.which("dvc")
needs_dvc = pytest.mark.skipif(DVC is None, reason="the dvc CLI is not installed (test extra)")

# Reads every CSV under the dataset folder; reports how many it saw and that the nested one
# is there, so the test knows the pipeline got the laid-out folder, not the manifest.
FOLDER_PIPELINE = """\
from pathlib import Path
import numpy as np
from sklearn.linear_model import LogisticRegression


def prepare(data_path, params):
    files = sorted(Path(data_path).rglob("*.csv"))
    assert (Path(data_path) / "nested" / "part-2.csv").is_file()
    table = np.vstack([np.loadtxt(f, delimiter=",", skiprows=1, ndmin=2) for f in files])
    X, y = table[:, :-1], table[:, -1].astype(int)
    return {"X": X, "y": y, "nfiles": len(files)}


def train(data, params):
    return LogisticRegression(max_iter=200).fit(data["X"], data["y"])


def evaluate(model, data):
    return {"accuracy": float((model.predict(data["X"]) == data["y"]).mean()),
            "files_seen": float(data["nfiles"])}
"""


def _dvc(ws: Workspace, *args: str) -> str:
    assert DVC is not None
    done = subprocess.run(
        [DVC, *args], cwd=ws.root, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _folder(ws: Workspace) -> Path:
    write_dataset(ws, "data/parts/part-1.csv", seed=1)
    write_dataset(ws, "data/parts/nested/part-2.csv", seed=2)
    return ws.root / "data" / "parts"


def _dvc_init(ws: Workspace) -> None:
    _dvc(ws, "init", "-q")
    _dvc(ws, "config", "core.analytics", "false")
    _dvc(ws, "config", "cache.dir", str(ws.cache_dir))


def _metrics(capsys: Any, ws: Workspace, model: str) -> dict[str, float]:
    shown = mw_json(capsys, ws, "show", model)
    versions = shown.get("versions") or [shown]
    return dict(versions[0]["metrics"])


@needs_dvc
def test_real_dvc_add_of_a_folder_trains_on_its_files(capsys: Any, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    _dvc_init(ws)
    folder = _folder(ws)
    _dvc(ws, "add", "-q", "data/parts")
    pointer = read_pointer(ws.root / "data" / "parts.dvc")
    assert pointer.md5.endswith(".dir")
    manifest = cache_path(ws.cache_dir, pointer.md5)
    assert manifest.is_file(), "dvc must write into the modelworks cache layout"
    # Our manifest bytes (and so our hash) are the ones DVC computed.
    entries = read_manifest(manifest, pointer.md5, 100)
    assert [rel for rel, _ in entries] == ["nested/part-2.csv", "part-1.csv"]
    assert hashlib.md5(manifest_bytes(entries)).hexdigest() + ".dir" == pointer.md5

    write_pipeline(ws, "folder", source=FOLDER_PIPELINE, commit=False)
    write_spec(ws, "parts", "data/parts", pipeline="folder", commit=False)
    _git.git(ws.root, "add", "-A")
    _git.git(ws.root, "commit", "-q", "-m", "dvc add data/parts")

    planned = mw_json(capsys, ws, "plan")
    assert [m["action"] for m in planned["models"]] == ["create"], planned
    code, out, err = mw(capsys, ws, "apply")
    assert code == 0, out + err
    assert _metrics(capsys, ws, "parts")["files_seen"] == 2.0
    laid_out = ws.state_dir / "dirs" / pointer.md5.removesuffix(".dir")
    assert (laid_out / "part-1.csv").read_bytes() == (folder / "part-1.csv").read_bytes()
    assert not (laid_out / "part-1.csv").stat().st_mode & 0o222, "laid out read-only"


@needs_dvc
def test_mw_data_add_folder_is_what_real_dvc_expects(capsys: Any, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    folder = _folder(ws)
    write_spec(ws, "parts", "data/parts", dvc_hash="0" * 32, commit=False)
    v = add(ws, folder)
    doc = yaml.safe_load((ws.root / "data" / "parts.dvc").read_text())
    out = doc["outs"][0]
    assert out == {"md5": v.md5, "size": v.size, "nfiles": 2, "hash": "md5", "path": "parts"}
    assert v.md5.endswith(".dir")
    assert v.bumped == ["models/parts.json"]
    spec = json.loads((ws.models_dir / "parts.json").read_text())
    assert spec["data_source"]["dvc_hash"] == v.md5
    assert "/parts" in (ws.root / "data" / ".gitignore").read_text().splitlines()

    _dvc_init(ws)
    status = _dvc(ws, "status", "data/parts.dvc")
    assert "up to date" in status.lower(), status
    (folder / "nested" / "part-2.csv").unlink()
    assert "changed" in _dvc(ws, "status", "data/parts.dvc").lower()
    _dvc(ws, "checkout", "data/parts.dvc")
    restored = folder / "nested" / "part-2.csv"
    assert restored.is_file()
    assert hashlib.md5(restored.read_bytes()).hexdigest() in {
        md5 for _, md5 in read_manifest(cache_path(ws.cache_dir, v.md5), v.md5, 100)
    }


def test_spec_and_pointer_accept_dir_hashes_only_in_dvc_form(tmp_path: Path) -> None:
    base = {
        "model_name": "m",
        "kubeflow_pipeline": "p",
        "kubeflow_pipeline_version": "p-v1",
        "runtime_name": "sklearn",
    }
    ok = {"type": "dvc", "dataset": "d", "dvc_hash": "a" * 32 + ".dir"}
    spec = parse_spec(tmp_path / "m.json", {**base, "data_source": ok})
    assert spec.data_source.dvc_hash == "a" * 32 + ".dir"
    for bad in ("a" * 32 + ".dirx", "a" * 31 + ".dir", "A" * 32 + ".dir"):
        with pytest.raises(SpecError, match=r"data_source\.dvc_hash"):
            parse_spec(tmp_path / "m.json", {**base, "data_source": {**ok, "dvc_hash": bad}})
    pointer = tmp_path / "d.dvc"
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": "b" * 32 + ".dir", "path": "d"}]}))
    assert read_pointer(pointer).md5 == "b" * 32 + ".dir"
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": "b" * 32 + ".zip", "path": "d"}]}))
    with pytest.raises(DataError, match=r"d\.dvc: field 'outs\[0\]\.md5'"):
        read_pointer(pointer)


def _hostile(ws: Workspace, entries: list[dict[str, str]]) -> tuple[str, Path]:
    """Store a crafted manifest (and the content it lists) in the cache; point data/evil at it."""
    content = b"x,label\n1,0\n"
    md5 = hashlib.md5(content).hexdigest()
    blob = cache_path(ws.cache_dir, md5)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    data = json.dumps([{"md5": md5, **e} for e in entries], sort_keys=True).encode()
    digest = hashlib.md5(data).hexdigest() + ".dir"
    manifest = cache_path(ws.cache_dir, digest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_bytes(data)
    (ws.root / "data").mkdir(exist_ok=True)
    (ws.root / "data" / "evil.dvc").write_text(
        yaml.safe_dump({"outs": [{"md5": digest, "hash": "md5", "path": "evil"}]})
    )
    write_pipeline(ws, commit=False)
    write_spec(ws, "evil", "data/evil", commit=False)
    _git.git(ws.root, "add", "-A")
    _git.git(ws.root, "commit", "-q", "-m", "hostile manifest")
    return digest, manifest


def _refused(capsys: Any, ws: Workspace, *expected: str) -> None:
    code, out, err = mw(capsys, ws, "plan")
    assert code != 0, out
    for text in expected:
        assert text in out + err, out + err
    dirs = ws.state_dir / "dirs"
    assert not dirs.exists() or not list(dirs.iterdir()), "nothing laid out, no leftovers"


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("../x.csv", "'../x.csv' leaves the folder"),
        ("/etc/x.csv", "'/etc/x.csv' leaves the folder"),
        ("a/../../x.csv", "leaves the folder"),
    ],
)
def test_hostile_relpaths_are_refused(
    capsys: Any, workspace: Workspace, relpath: str, expected: str
) -> None:
    _, manifest = _hostile(workspace, [{"relpath": relpath}])
    _refused(capsys, workspace, str(manifest), expected)
    assert not (workspace.root / "x.csv").exists()


def test_manifest_not_matching_its_hash_is_refused(capsys: Any, workspace: Workspace) -> None:
    digest, manifest = _hostile(workspace, [{"relpath": "a.csv"}])
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes().replace(b"a.csv", b"b.csv"))
    _refused(capsys, workspace, str(manifest), f"expected {digest}")


def test_cached_file_not_matching_its_md5_is_refused(capsys: Any, workspace: Workspace) -> None:
    _, manifest = _hostile(workspace, [{"relpath": "a.csv"}])
    data = json.loads(manifest.read_text())
    blob = cache_path(workspace.cache_dir, data[0]["md5"])
    blob.write_bytes(b"tampered\n")
    _refused(capsys, workspace, str(manifest), "file 'a.csv' has md5")


def test_too_many_files_is_refused(capsys: Any, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", data={"max_files": 2})
    _hostile(ws, [{"relpath": f"f{i}.csv"} for i in range(3)])
    _refused(capsys, ws, "3 files, more than data.max_files (2)")
    folder = ws.root / "data" / "big"
    for i in range(3):
        write_dataset(ws, f"data/big/f{i}.csv")
    before = sorted(p for p in ws.cache_dir.rglob("*"))
    with pytest.raises(DataError, match=r"big: has more than data.max_files \(2\)"):
        add(ws, folder)
    assert sorted(p for p in ws.cache_dir.rglob("*")) == before
    assert not (ws.root / "data" / "big.dvc").exists()


def test_add_refuses_a_symlink_out_of_the_folder(workspace: Workspace, tmp_path: Path) -> None:
    folder = workspace.root / "data" / "linked"
    folder.mkdir(parents=True)
    (tmp_path / "secret.csv").write_text("a,b\n")
    (folder / "ok.csv").write_text("a,b\n")
    (folder / "leak.csv").symlink_to(tmp_path / "secret.csv")
    with pytest.raises(DataError, match=r"leak\.csv: a symlink to .*secret\.csv, outside"):
        add(workspace, folder)
    assert not (workspace.root / "data" / "linked.dvc").exists()


def test_materialize_reuses_a_laid_out_folder(workspace: Workspace) -> None:
    folder = workspace.root / "data" / "two"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("1\n")
    (folder / "b.csv").write_text("2\n")
    v = add(workspace, folder, commit=False)
    manifest = cache_path(workspace.cache_dir, v.md5)
    dest = workspace.state_dir / "dirs"

    def find(md5: str) -> Path | None:
        hit = cache_path(workspace.cache_dir, md5)
        return hit if hit.exists() else None

    first = materialize(manifest, v.md5, find, dest, 10)
    assert sorted(p.name for p in first.iterdir()) == ["a.csv", "b.csv"]
    assert materialize(manifest, v.md5, lambda _: None, dest, 10) == first


@pytest.mark.ray
def test_ray_workers_get_the_laid_out_folder(capsys: Any, tmp_path: Path, ray_local: Path) -> None:
    pytest.importorskip("ray", reason="the ray package is not installed")
    from modelworks.apply import apply
    from modelworks.registry.store import Store
    from modelworks.runs.ray_executor import RayExecutor

    ws = make_workspace(tmp_path / "ws")
    _folder(ws)
    write_pipeline(ws, "folder", source=FOLDER_PIPELINE, commit=False)
    write_spec(ws, "parts", "data/parts", pipeline="folder", commit=False)
    v = add(ws, ws.root / "data" / "parts", commit=False)
    _git.git(ws.root, "add", "-A")
    _git.git(ws.root, "commit", "-q", "-m", "a directory dataset")

    result = apply(ws, Store(ws.registry_url), executor=RayExecutor(1))

    assert [t["name"] for t in result.trained] == ["parts"], result.failed
    assert result.trained[0]["metrics"]["files_seen"] == 2.0
    cached = list((ray_local / "data").glob("dir-*"))
    assert len(cached) == 1
    assert (cached[0] / "nested" / "part-2.csv").is_file()
    assert v.md5.endswith(".dir")


def test_a_watched_directory_dataset_is_versioned_as_one_folder(tmp_path: Path) -> None:
    from modelworks.controller.state import ControllerState
    from modelworks.controller.triggers import scan_watched, version_files

    ws = make_workspace(tmp_path / "ws", data={"watch": ["data"]})
    folder = _folder(ws)
    write_spec(ws, "parts", "data/parts", dvc_hash="0" * 32, commit=False)
    first = add(ws, folder)
    state = ControllerState()
    _settled(folder)
    assert scan_watched(ws, state) == []  # versioned: its files are not taken one by one
    write_dataset(ws, "data/parts/nested/part-3.csv", seed=3)
    _settled(folder)
    found = scan_watched(ws, state)
    assert found == [folder]
    out = version_files(ws, state, found, actor="controller")
    now = read_pointer(ws.root / "data" / "parts.dvc").md5
    assert now != first.md5
    assert now.endswith(".dir")
    assert [f["dataset"] for f in out["files"]] == ["data/parts"]
    spec = json.loads((ws.models_dir / "parts.json").read_text())
    assert spec["data_source"]["dvc_hash"] == now
    assert not list(folder.rglob("*.dvc"))
    assert scan_watched(ws, state) == []


def _settled(folder: Path) -> None:
    """Files older than the watcher's settle time."""
    old = time.time() - 5
    for f in folder.rglob("*"):
        os.utime(f, (old, old))


def test_add_refuses_the_workspace_and_its_state(capsys: Any, workspace: Workspace) -> None:
    code, _, err = mw(capsys, workspace, "data", "add", str(workspace.root))
    assert code != 0
    assert "is the workspace itself" in err
    (workspace.state_dir / "x").mkdir(parents=True, exist_ok=True)
    for inside in (workspace.state_dir, workspace.state_dir / "x"):
        with pytest.raises(DataError, match="overlaps the workspace state"):
            add(workspace, inside)
    assert not list(workspace.root.parent.glob("*.dvc"))
    assert not (workspace.root / ".mw.dvc").exists()


@pytest.mark.integration
def test_folder_goes_to_an_s3_remote_and_comes_back(
    s3_server: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from modelworks.data.sources import DataResolver
    from modelworks.spec import load_spec

    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = s3_server.bucket()
    ws = make_workspace(
        tmp_path / "ws",
        data={"endpoint_url": s3_server.endpoint, "remote": f"s3://{bucket}/store"},
    )
    folder = _folder(ws)
    v = add(ws, folder)
    key = f"store/files/md5/{v.md5[:2]}/{v.md5[2:]}"
    assert v.remote == f"s3://{bucket}/{key}"
    # A fresh machine: nothing in the local cache, all of it comes from the remote, verified.
    shutil.rmtree(ws.cache_dir)
    spec = load_spec(write_spec(ws, "parts", "data/parts")).spec
    assert spec is not None
    ref = DataResolver(ws).resolve(spec)
    laid_out = ref.files[0]
    assert (laid_out / "nested" / "part-2.csv").read_bytes() == (
        folder / "nested" / "part-2.csv"
    ).read_bytes()
