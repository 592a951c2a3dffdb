"""Errors and exit codes through the real CLI: clear one-line errors, the right code, no retries."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

import pytest

from modelworks import _git
from modelworks.data.add import add
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
    started = time.monotonic()
    code, _out, err = run_cli(capsys, "apply", "--json", "-C", str(workspace.root))
    assert code == 1, err
    assert time.monotonic() - started < 8  # three attempts with backoff took 11 s
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
