"""Errors and exit codes through the real CLI: clear one-line errors, the right code, no retries."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from modelworks import _git, errors
from modelworks.data.add import add
from modelworks.errors import LockError, UnavailableError
from modelworks.testing import TINY_PIPELINE, run_cli, write_dataset, write_pipeline, write_spec

if TYPE_CHECKING:
    from modelworks.workspace import Workspace

SPEC = {
    "data_source": {"type": "dvc", "dataset": "data/d/data.csv"},
    "model_name": "m",
    "kubeflow_pipeline": "tiny",
    "kubeflow_pipeline_version": "tiny-v1",
    "runtime_name": "sklearn",
}


def _one_clean_line(err: str) -> str:
    """The stderr of a failed command: one error line, no traceback, not a 'bug'."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "unexpected error" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_unknown_model_name_is_an_error_with_did_you_mean(
    fleet: Workspace, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, err = run_cli(capsys, command, "model-1x", "-C", str(fleet.root))
    assert code == 1
    line = _one_clean_line(err)
    assert "model-1x" in line
    assert "Did you mean 'model-1'?" in line
    assert "Plan:" not in out


def _runs(ws: Workspace) -> list[tuple[str, int, str]]:
    with sqlite3.connect(ws.state_dir / "registry.db") as conn:
        return conn.execute("SELECT status, attempts, error FROM runs").fetchall()


IMPORTS_MISSING = TINY_PIPELINE.replace(
    "def train(data, params):", "def train(data, params):\n    import nopkg_x  # noqa: F401"
)


@pytest.mark.parametrize(
    ("source", "params", "expected"),
    [
        (TINY_PIPELINE, {"C": "high"}, "InvalidParameterError"),
        (IMPORTS_MISSING, {}, "No module named 'nopkg_x'"),
        (TINY_PIPELINE.replace("skiprows=1", "skiprows=0"), {}, "ValueError"),
    ],
    ids=["bad-hyperparameter", "import-error", "bad-data"],
)
def test_a_failure_a_retry_cannot_fix_is_attempted_once(
    workspace: Workspace,
    capsys: pytest.CaptureFixture[str],
    source: str,
    params: dict[str, Any],
    expected: str,
) -> None:
    write_pipeline(workspace, source=source, commit=False)
    write_dataset(workspace, "data/d/data.csv")
    write_spec(workspace, "m", "data/d/data.csv", commit=False, model_hyperparameters=params)
    add(workspace, workspace.root / "data/d/data.csv", commit=False)
    _git.commit(workspace.root, ["models", "pipelines", "data"], "a model that cannot train")
    code, _out, err = run_cli(capsys, "apply", "--json", "-C", str(workspace.root))
    assert code == 1, err
    [(status, attempts, error)] = _runs(workspace)
    assert (status, attempts) == ("failed", 1)
    assert expected in error


def test_brackets_in_messages_are_printed_not_parsed_as_markup(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = workspace.models_dir / "bad.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({**SPEC, "model_name": "Bad Name"}))
    _git.commit(workspace.root, ["models"], "a spec with a bad name")
    code, out, _err = run_cli(capsys, "plan", "-C", str(workspace.root))
    assert code == 1
    assert "'^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$'" in out  # the name pattern, whole
    code, _out, err = run_cli(capsys, "data", "add", "data/[bold]x.csv", "-C", str(workspace.root))
    assert code == 1
    assert "data/[bold]x.csv" in _one_clean_line(err)


def _mw(ws: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `mw` process (its exit code is what a script sees)."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return subprocess.run(
        [sys.executable, "-m", "modelworks", *args],
        cwd=ws.root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_on_a_port_in_use_exits_unavailable_not_locked(workspace: Workspace) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _mw(workspace, "serve", "--port", str(port))
    assert proc.returncode == UnavailableError.exit_code == 69
    assert proc.returncode != LockError.exit_code
    line = _one_clean_line(proc.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in line


def _error_classes() -> list[type[errors.ModelworksError]]:
    found: list[type[errors.ModelworksError]] = []
    todo = [errors.ModelworksError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_readme_exit_code_table_is_errors_py() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \|([^|]+)\|([^|]*)\|$", readme, flags=re.MULTILINE)
    table = {
        int(code): (meaning.strip(), re.findall(r"`(\w+)`", names)) for code, meaning, names in rows
    }
    assert set(table) == set(errors.EXIT_CODES)  # one table, every code
    for code, label in errors.EXIT_CODES.items():
        assert table[code][0].startswith(label), (code, table[code][0])
    named = {name: code for code, (_, names) in table.items() for name in names}
    for name, code in named.items():
        assert getattr(errors, name).exit_code == code, name
    public = [c for c in _error_classes() if c.__module__ == "modelworks.errors"]
    assert {c.__name__ for c in public} == set(named)  # every family of errors.py is in the table
    for cls in _error_classes():  # and no class anywhere has a code the table lacks
        assert cls.exit_code in errors.EXIT_CODES, cls
    # The public contract keeps its numbers.
    assert (errors.ModelworksError.exit_code, errors.LockError.exit_code, errors.EXIT_BUG) == (
        1,
        3,
        70,
    )


def test_a_usage_error_is_not_exit_2(workspace: Workspace) -> None:
    proc = _mw(workspace, "plan", "--no-such-option")
    assert proc.returncode == 64  # 2 means "changes found" (plan --detailed-exitcode)
    assert "No such option" in proc.stderr


NO_PSYCOPG = (
    "import sys; sys.modules['psycopg'] = sys.modules['psycopg2'] = None; "  # not installed
    "from modelworks.cli import main; main()"
)


def _garbage_yaml(ws: Workspace) -> dict[str, str]:
    (ws.root / "modelworks.yaml").write_bytes(b"\xff\xfe\x00\x9b garbage \x00\x01")
    return {}


def _mw_is_a_file(ws: Workspace) -> dict[str, str]:
    shutil.rmtree(ws.state_dir)
    ws.state_dir.write_text("not a folder")
    return {}


def _read_only_mw(ws: Workspace) -> dict[str, str]:
    """.mw and everything in it unwritable: by mode bits, or for root (who ignores them) by the
    immutable attribute, which root's writes fail on too (EPERM instead of EACCES)."""
    paths = [ws.state_dir, *ws.state_dir.rglob("*")]
    if os.geteuid() != 0:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return {}
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: nothing can make .mw read-only for root")
    proc = subprocess.run([chattr, "+i", *map(str, paths)], capture_output=True, text=True)
    _IMMUTABLE.extend(paths)
    if proc.returncode != 0:
        pytest.skip(f"running as root and chattr +i is refused here: {proc.stderr.strip()}")
    return {}


_IMMUTABLE: list[Path] = []


@pytest.fixture(autouse=True)
def _undo_immutable() -> Iterator[None]:
    """Clear the immutable attribute _read_only_mw set, so the tmp folder can be removed."""
    yield
    if _IMMUTABLE:
        subprocess.run(["chattr", "-i", *map(str, _IMMUTABLE)], capture_output=True)
        _IMMUTABLE.clear()


HOSTILE = {
    "garbage-yaml": (_garbage_yaml, 78, "modelworks.yaml: not a text file"),
    "mysql-url": (
        lambda ws: {"MW_REGISTRY_URL": "mysql://mw:pw@localhost/registry"},
        78,
        "unsupported database 'mysql'",
    ),
    "postgres-without-psycopg": (
        lambda ws: {"MW_REGISTRY_URL": "postgresql://mw:pw@127.0.0.1/registry", "-c": NO_PSYCOPG},
        78,
        "pip install 'modelworks[postgres]'",
    ),
    "bad-env-variable": (
        lambda ws: {"MW_WORKERS": "abc"},
        78,
        "environment variable MW_WORKERS: Input should be a valid integer",
    ),
    "mw-is-a-file": (_mw_is_a_file, 74, ".mw: File exists"),
    "read-only-mw": (_read_only_mw, 74, ".mw"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_workspace_is_a_clear_error_not_a_bug(fleet: Workspace, case: str) -> None:
    make, code, expected = HOSTILE[case]
    env = make(fleet)
    script = env.pop("-c", None)
    args = ["-c", script, "plan"] if script else ["-m", "modelworks", "plan"]
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=fleet.root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    line = _one_clean_line(proc.stderr)
    assert expected in line
    assert "pw@" not in line  # a password in the URL stays masked
    if case == "bad-env-variable":
        assert "modelworks.yaml" not in line  # the variable is at fault, not the file


def test_data_add_of_a_missing_path_says_it_does_not_exist(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(
        capsys, "data", "add", str(workspace.root / "data/nope.csv"), "-C", str(workspace.root)
    )
    assert code == 1
    line = _one_clean_line(err)
    assert "data/nope.csv: does not exist" in line
    assert "not a file" not in line


def test_a_missing_data_hash_lists_each_cache_once(
    fleet: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    data_source = {"type": "dvc", "dataset": "data/set0/data.csv", "dvc_hash": "0" * 32}
    write_spec(fleet, "no-cache", "data/set0/data.csv", data_source=data_source)
    code, out, err = run_cli(capsys, "plan", "--json", "no-cache", "-C", str(fleet.root))
    assert code == 1, err
    [model] = json.loads(out)["models"]
    [reason] = [r for r in model["reasons"] if "is not in the cache" in r]
    where = re.search(r"is not in the cache \(([^)]*)\)", reason)
    assert where is not None, reason
    caches = where.group(1).split(", ")
    assert len(caches) == len(set(caches)) == 1, reason  # the workspace is its own data repo


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"data_source": {"type": "dvc", "datset": "data/d/data.csv"}},
            "field 'data_source.datset': unknown field. Did you mean 'dataset'?",
        ),
        (
            {"gates": {"minn": {"accuracy": 0.5}}},
            "field 'gates.minn': unknown field. Did you mean 'min'?",
        ),
        (
            {"data_source": None, "data_sorce": {"type": "dvc", "dataset": "data/d/data.csv"}},
            "field 'data_source': is required but missing. Is 'data_sorce' a typo of it?",
        ),
    ],
    ids=["data_source.datset", "gates.minn", "missing-typo"],
)
def test_spec_typos_get_a_did_you_mean(
    workspace: Workspace,
    capsys: pytest.CaptureFixture[str],
    fields: dict[str, Any],
    expected: str,
) -> None:
    spec = {k: v for k, v in {**SPEC, **fields}.items() if v is not None}
    (workspace.models_dir / "m.json").write_text(json.dumps(spec))
    _git.commit(workspace.root, ["models"], "a spec with a typo")
    code, out, _err = run_cli(capsys, "plan", "-C", str(workspace.root))
    assert code == 1
    assert expected in out
