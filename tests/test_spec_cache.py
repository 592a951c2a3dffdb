"""The spec cache (spec_cache.py) never returns a stale spec: uncommitted edits, commits,
branch checkouts, assume-unchanged files and a damaged or tampered cache all read the truth."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from modelworks.spec import LoadedSpec, load_specs
from modelworks.spec_cache import CACHE_FILE, blob_id
from modelworks.testing import make_workspace, write_spec
from modelworks.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = make_workspace(tmp_path / "ws")
    for i in range(4):
        write_spec(ws, f"m{i}", "data/d.csv", commit=False, model_hyperparameters={"C": i})
    write_spec(ws, "y0", "data/d.csv", fmt="yaml", commit=False)
    _git(ws, "add", "models")
    _git(ws, "commit", "-q", "-m", "specs")
    return ws


def _git(ws: Workspace, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ws.root, check=True, capture_output=True, text=True
    ).stdout


def _load(ws: Workspace) -> list[LoadedSpec]:
    return load_specs(ws.models_dir, cache_dir=ws.state_dir)


def _view(items: list[LoadedSpec]) -> list[tuple[Any, ...]]:
    return [(i.path, i.spec, i.raw, i.error) for i in items]


def _assert_truth(ws: Workspace) -> list[LoadedSpec]:
    """The cached load equals an uncached one (the files on disk)."""
    got = _load(ws)
    assert _view(got) == _view(load_specs(ws.models_dir))
    return got


def _c(items: list[LoadedSpec], name: str) -> Any:
    return next(i.spec.hyperparameters["C"] for i in items if i.spec and i.name == name)


def _entries(ws: Workspace) -> dict[str, Any]:
    body = (ws.state_dir / CACHE_FILE).read_bytes().partition(b"\n")[2]
    entries: dict[str, Any] = json.loads(body)
    return entries


def test_committed_specs_are_cached_and_read_back_equal(ws: Workspace) -> None:
    _assert_truth(ws)
    entries = _entries(ws)
    assert sorted(entries) == ["m0.json", "m1.json", "m2.json", "m3.json"]  # YAML: read each time
    blob = _git(ws, "rev-parse", "HEAD:models/m1.json").strip()
    assert entries["m1.json"][0] == blob == blob_id(entries["m1.json"][1].encode())
    assert _c(_assert_truth(ws), "m1") == 1


def test_an_uncommitted_edit_is_read_from_disk(ws: Workspace) -> None:
    _assert_truth(ws)
    path = ws.models_dir / "m1.json"
    raw = json.loads(path.read_text())
    raw["model_hyperparameters"] = {"C": 99}
    path.write_text(json.dumps(raw, indent=2))
    assert _c(_assert_truth(ws), "m1") == 99
    _git(ws, "add", str(path))  # staged: the index's blob is the new content
    assert _c(_assert_truth(ws), "m1") == 99
    _git(ws, "commit", "-q", "-m", "C=99")
    assert _c(_assert_truth(ws), "m1") == 99
    assert _c(_assert_truth(ws), "m1") == 99  # now from the cache
    assert json.loads(_entries(ws)["m1.json"][1])["model_hyperparameters"] == {"C": 99}


def test_a_same_size_edit_right_after_caching_is_seen(ws: Workspace) -> None:
    _assert_truth(ws)
    path = ws.models_dir / "m2.json"
    path.write_text(path.read_text().replace('"C": 2', '"C": 7'))  # same size, same second
    assert _c(_assert_truth(ws), "m2") == 7


def test_checking_out_another_branch_reads_that_branchs_specs(ws: Workspace) -> None:
    _assert_truth(ws)
    _git(ws, "checkout", "-q", "-b", "other")
    write_spec(ws, "m0", "data/d.csv", model_hyperparameters={"C": 42})
    (ws.models_dir / "m3.json").unlink()
    _git(ws, "commit", "-q", "-am", "other branch")
    got = _assert_truth(ws)
    assert _c(got, "m0") == 42
    assert "m3" not in [i.name for i in got]
    _git(ws, "checkout", "-q", "-")
    assert _c(_assert_truth(ws), "m0") == 0
    _git(ws, "checkout", "-q", "other")
    assert _c(_assert_truth(ws), "m0") == 42


def test_untracked_and_assume_unchanged_specs_are_read_from_disk(ws: Workspace) -> None:
    _assert_truth(ws)
    write_spec(ws, "new", "data/d.csv", commit=False, model_hyperparameters={"C": 5})
    assert _c(_assert_truth(ws), "new") == 5
    assert "new.json" not in _entries(ws)
    _git(ws, "update-index", "--assume-unchanged", "models/m3.json")
    path = ws.models_dir / "m3.json"
    path.write_text(path.read_text().replace('"C": 3', '"C": 8'))
    assert _c(_assert_truth(ws), "m3") == 8  # git no longer watches it: never from the cache


@pytest.mark.parametrize("damage", ["garbage", "truncated", "body", "empty", "directory"])
def test_a_damaged_cache_is_ignored_and_rewritten(ws: Workspace, damage: str) -> None:
    _assert_truth(ws)
    cache = ws.state_dir / CACHE_FILE
    data = cache.read_bytes()
    if damage == "garbage":
        cache.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        cache.write_bytes(data[: len(data) // 2])
    elif damage == "body":
        cache.write_bytes(data.replace(b'\\"C\\": 1', b'\\"C\\": 5'))
    elif damage == "empty":
        cache.write_bytes(b"")
    else:
        cache.unlink()
        cache.mkdir()
    assert _c(_assert_truth(ws), "m1") == 1
    if damage != "directory":
        assert _entries(ws)["m1.json"][0] == _git(ws, "rev-parse", "HEAD:models/m1.json").strip()


def test_a_tampered_entry_with_a_valid_checksum_is_not_trusted(ws: Workspace) -> None:
    _assert_truth(ws)
    cache = ws.state_dir / CACHE_FILE
    header_line, _, _body = cache.read_bytes().partition(b"\n")
    entries = _entries(ws)
    entries["m1.json"][1] = entries["m1.json"][1].replace('"C": 1', '"C": 6')
    body = json.dumps(entries).encode()
    header = json.loads(header_line)
    header["sha256"] = hashlib.sha256(body).hexdigest()
    cache.write_bytes(json.dumps(header).encode() + b"\n" + body)
    assert _c(_assert_truth(ws), "m1") == 1


def test_a_read_only_state_dir_just_goes_uncached(ws: Workspace, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder would be")
    got = load_specs(ws.models_dir, cache_dir=blocked)
    assert _view(got) == _view(load_specs(ws.models_dir))
